//! Chat templates rendered with minijinja, configured as Hugging Face
//! renders them (trim_blocks, lstrip_blocks, Python string methods).

use crate::error::{EngineError, Result};
use serde::{Deserialize, Serialize};

/// One message as Hugging Face templates see it: `tool_calls` holds
/// `{"id", "type": "function", "function": {"name", "arguments"}}` with the
/// arguments as an object (templates `tojson` them), and a tool's result
/// names the call it answers in `tool_call_id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage { role: role.into(), content: content.into(), tool_calls: None, tool_call_id: None, name: None }
    }
}

pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

/// `tojson` as Hugging Face's templates get it: Python's `json.dumps` with
/// `ensure_ascii=False`, so `", "` and `": "` between items (minijinja's own
/// filter writes compact JSON, which would change the prompt a model was
/// trained on), and `indent=n` for the pretty form.
fn py_tojson(value: minijinja::Value, kwargs: minijinja::value::Kwargs) -> std::result::Result<minijinja::Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let v = serde_json::to_value(&value).map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    write_py_json(&v, indent, 0, &mut out);
    Ok(minijinja::Value::from_safe_string(out))
}

fn write_py_json(v: &serde_json::Value, indent: Option<usize>, depth: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                write_py_json(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, x)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(out, depth + 1);
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_py_json(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn raise_exception(msg: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", py_tojson);
        env.add_function("strftime_now", |fmt: String| -> String {
            // Templates use this for a "today" line; a fixed date keeps
            // prompts (and so outputs) reproducible.
            fmt.replace("%d", "01").replace("%b", "Jan").replace("%B", "January").replace("%Y", "2025").replace("%m", "01")
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| EngineError::ChatTemplate(format!("cannot parse template: {e}")))?;
        Ok(ChatTemplate { env, source: source.to_string(), bos_token: bos_token.into(), eos_token: eos_token.into() })
    }

    /// Renders the conversation; with `add_generation_prompt` it ends where
    /// the assistant's reply begins.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// The template's source text (callers look for the markers of a tool
    /// call format in it).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template renders a `tools` list (Llama 3.1's, Qwen2's
    /// do; SmolLM2's does not).
    pub fn knows_tools(&self) -> bool {
        self.source.contains("tools")
    }

    /// As [`render`](Self::render), with OpenAI tool definitions passed to
    /// the template as `tools` (`{"type": "function", "function": {…}}`).
    pub fn render_with_tools(&self, messages: &[ChatMessage], tools: Option<&[serde_json::Value]>, add_generation_prompt: bool) -> Result<String> {
        if messages.is_empty() {
            return Err(EngineError::InvalidInput("messages must not be empty".into()));
        }
        let tmpl = self.env.get_template("chat").map_err(|e| EngineError::ChatTemplate(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| EngineError::ChatTemplate(format!("cannot render: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A template in the style of Qwen2's and Llama 3.1's (written for this
    /// test): tools listed with `tojson`, calls with their arguments
    /// `tojson`ed, results under their own role.
    const TOOLY: &str = "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }}:{{ t.function.parameters | tojson }};{% endfor %}</tools>{% endif %}\
{% for m in messages %}[{{ m.role }}]{% if m.tool_calls %}{% for c in m.tool_calls %}call {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}\
{% elif m.role == 'tool' %}result for {{ m.tool_call_id }}: {{ m.content }}{% else %}{{ m.content }}{% endif %}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}";

    #[test]
    fn tools_calls_and_results_reach_the_template() {
        let t = ChatTemplate::new(TOOLY, "", "").unwrap();
        assert!(t.knows_tools());
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(vec![json!({"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 1}}})]);
        let mut result = ChatMessage::new("tool", "2");
        result.tool_call_id = Some("c1".into());
        let msgs = [ChatMessage::new("user", "1+1?"), call, result];
        let tools = [json!({"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}})];
        let out = t.render_with_tools(&msgs, Some(&tools), true).unwrap();
        assert_eq!(out, "<tools>add:{\"type\": \"object\"};</tools>[user]1+1?[assistant]call add {\"a\": 1}[tool]result for c1: 2[assistant]");
        // Python's json.dumps layout, also with an indent.
        let t2 = ChatTemplate::new("{{ messages[0].tool_calls | tojson(indent=2) }}", "", "").unwrap();
        let mut m = ChatMessage::new("assistant", "");
        m.tool_calls = Some(vec![json!({"a": [1, 2.5, "é"], "b": {}, "c": []})]);
        assert_eq!(t2.render(&[m], false).unwrap(), "[\n  {\n    \"a\": [\n      1,\n      2.5,\n      \"é\"\n    ],\n    \"b\": {},\n    \"c\": []\n  }\n]");
        // Without tools the template leaves them out.
        assert!(!t.render(&msgs[..1], true).unwrap().contains("<tools>"));
        let plain = ChatTemplate::new("{% for m in messages %}{{ m.content }}{% endfor %}", "", "").unwrap();
        assert!(!plain.knows_tools());
    }
}

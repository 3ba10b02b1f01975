//! Tool calls: OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`.
//!
//! Strategy. The tools reach the model through its chat template (`tools`
//! in the template's context, as Hugging Face renders them). A template
//! that knows no tools (SmolLM2's) gets Aerie's own system preamble that
//! lists them and asks for calls in the Hermes format. The model's answer
//! is parsed in one of two formats (SGLang's `--tool-call-parser`):
//!
//! - `hermes` (Qwen2/2.5 and the preamble): each call a JSON object
//!   `{"name", "arguments"}` between `<tool_call>` and `</tool_call>`;
//! - `llama3`: the answer is one or more JSON objects `{"name",
//!   "parameters"}` separated by `;`.
//!
//! With `tool_choice` `required` or a named function, the output is
//! constrained (a Lark grammar with each function's parameter schema as
//! `%json`, compiled by llguidance on the target, so it stays exact under
//! speculation) to one call, or with `parallel_tool_calls` one or more. With
//! `auto`, the output is parsed and becomes `tool_calls` when it holds
//! calls to offered functions; anything else is content. With `none`, the
//! tools are left out of the prompt, so the model answers in text.
//!
//! Streaming: text that cannot be the start of a call is released as it
//! comes; a call is sent as two deltas (id and name, then the arguments)
//! as soon as its closing tag (hermes) or the end of the output (llama3)
//! proves it whole.

use crate::error::ApiError;
use aerie_engine::ChatTemplate;
use serde::Deserialize;
use serde_json::{json, Value};

/// How calls are written in the model's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `<tool_call>{"name": …, "arguments": {…}}</tool_call>`.
    Hermes,
    /// `{"name": …, "parameters": {…}}`, several separated by `;`.
    Llama3,
}

impl ToolFormat {
    /// SGLang's `--tool-call-parser` names for the two formats.
    pub fn from_name(name: &str) -> Result<Self, String> {
        match name {
            "hermes" | "qwen25" | "qwen" => Ok(ToolFormat::Hermes),
            "llama3" | "llama3_json" => Ok(ToolFormat::Llama3),
            _ => Err(format!("unknown tool-call parser `{name}` (hermes, qwen25, llama3)")),
        }
    }

    /// The format a template asks for: Llama 3.1's mentions `ipython`,
    /// Qwen's `<tool_call>`; a template without tools gets the preamble,
    /// which asks for Hermes.
    pub fn detect(template: &ChatTemplate) -> Self {
        let src = template.source();
        if !src.contains("<tool_call>") && (src.contains("<|python_tag|>") || src.contains("ipython")) {
            ToolFormat::Llama3
        } else {
            ToolFormat::Hermes
        }
    }
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// One offered function.
#[derive(Debug, Clone)]
pub struct Function {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments (an empty object schema when absent).
    pub parameters: Value,
}

/// What a request asked of tools, after checks.
#[derive(Debug, Clone)]
pub struct Tools {
    pub functions: Vec<Function>,
    pub choice: ToolChoice,
    pub parallel: bool,
    pub format: ToolFormat,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolDef {
    #[serde(rename = "type")]
    kind: String,
    function: FunctionDef,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionDef {
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
    /// Accepted; constrained calls always follow the schema exactly.
    #[allow(dead_code)]
    strict: Option<bool>,
}

fn invalid(msg: impl Into<String>, param: &str) -> ApiError {
    ApiError::invalid(msg, Some(param))
}

impl Tools {
    /// Checks a request's tool fields. `None` when the request offers no
    /// tools (then `tool_choice` must be absent or `none`).
    pub fn parse(tools: Option<Vec<Value>>, choice: Option<Value>, parallel: Option<bool>, format: ToolFormat) -> Result<Option<Tools>, ApiError> {
        let defs = tools.unwrap_or_default();
        if defs.is_empty() {
            return match choice {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s == "none" => Ok(None),
                Some(_) => Err(invalid("tool_choice is only allowed when tools are specified", "tool_choice")),
            };
        }
        let mut functions: Vec<Function> = Vec::with_capacity(defs.len());
        for (i, d) in defs.into_iter().enumerate() {
            let d: ToolDef = serde_json::from_value(d).map_err(|e| invalid(format!("tools[{i}]: {e}"), "tools"))?;
            if d.kind != "function" {
                return Err(invalid(format!("tools[{i}].type `{}` is not supported (function)", d.kind), "tools"));
            }
            let f = d.function;
            if f.name.is_empty() || f.name.len() > 64 || !f.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(invalid(format!("tools[{i}].function.name `{}` must be 1 to 64 letters, digits, underscores or dashes", f.name), "tools"));
            }
            if functions.iter().any(|g| g.name == f.name) {
                return Err(invalid(format!("tools[{i}]: the function `{}` is defined twice", f.name), "tools"));
            }
            let parameters = match f.parameters {
                None => json!({"type": "object", "properties": {}}),
                Some(p @ Value::Object(_)) => p,
                Some(_) => return Err(invalid(format!("tools[{i}].function.parameters must be a JSON Schema object"), "tools")),
            };
            functions.push(Function { name: f.name, description: f.description, parameters });
        }
        let choice = match choice {
            None | Some(Value::Null) => ToolChoice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "none" => ToolChoice::None,
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                _ => return Err(invalid(format!("tool_choice `{s}` is not one of none, auto, required or a function"), "tool_choice")),
            },
            Some(v @ Value::Object(_)) => {
                let name = (v["type"] == "function").then(|| v["function"]["name"].as_str()).flatten();
                let Some(name) = name else {
                    return Err(invalid("tool_choice must be {\"type\": \"function\", \"function\": {\"name\": …}}", "tool_choice"));
                };
                if !functions.iter().any(|f| f.name == name) {
                    return Err(invalid(format!("tool_choice names the function `{name}`, which is not in tools"), "tool_choice"));
                }
                ToolChoice::Named(name.to_string())
            }
            Some(_) => return Err(invalid("tool_choice must be a string or an object", "tool_choice")),
        };
        Ok(Some(Tools { functions, choice, parallel: parallel.unwrap_or(true), format }))
    }

    /// The tools as the template sees them, or `None` with `tool_choice`
    /// `none`.
    pub fn for_template(&self) -> Option<Vec<Value>> {
        (self.choice != ToolChoice::None).then(|| self.functions.iter().map(openai_tool).collect())
    }

    /// Whether the output is parsed for calls.
    pub fn parses(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The system text that teaches a tool-less template's model the
    /// functions and the Hermes call format.
    pub fn preamble(&self) -> String {
        let mut s = String::from("You may call functions to answer. They are described as JSON Schemas between <tools> and </tools>:\n<tools>\n");
        for f in &self.functions {
            s.push_str(&openai_tool(f).to_string());
            s.push('\n');
        }
        s.push_str("</tools>\nTo call one, answer with a JSON object holding its name and arguments between <tool_call> and </tool_call>, like this:\n<tool_call>\n{\"name\": \"function_name\", \"arguments\": {\"argument\": \"value\"}}\n</tool_call>");
        s
    }

    /// The Lark grammar the output must follow, for `required` and a named
    /// function; `None` for `auto` and `none`.
    pub fn grammar(&self) -> Option<String> {
        let offered: Vec<&Function> = match &self.choice {
            ToolChoice::None | ToolChoice::Auto => return None,
            ToolChoice::Required => self.functions.iter().collect(),
            ToolChoice::Named(n) => self.functions.iter().filter(|f| &f.name == n).collect(),
        };
        let args_key = match self.format {
            ToolFormat::Hermes => "arguments",
            ToolFormat::Llama3 => "parameters",
        };
        // One alternative per function; `name` first, then the arguments,
        // in the order the parser and the templates write them.
        let alts: Vec<Value> = offered
            .iter()
            .map(|f| {
                json!({"type": "object", "properties": {"name": {"const": f.name}, args_key: f.parameters},
                       "required": ["name", args_key], "additionalProperties": false})
            })
            .collect();
        let schema = json!({"anyOf": alts, "x-guidance": {"whitespace_flexible": false}});
        let (call, sep) = match self.format {
            ToolFormat::Hermes => ("\"<tool_call>\\n\" body \"\\n</tool_call>\"", "\"\\n\""),
            ToolFormat::Llama3 => ("body", "\"; \""),
        };
        let start = if self.parallel { format!("call ({sep} call)*") } else { "call".to_string() };
        Some(format!("start: {start}\ncall: {call}\nbody: %json {schema}\n"))
    }
}

fn openai_tool(f: &Function) -> Value {
    let mut func = json!({"name": f.name, "parameters": f.parameters});
    if let Some(d) = &f.description {
        func["description"] = json!(d);
    }
    json!({"type": "function", "function": func})
}

/// A parsed call.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: String,
    /// The arguments as a JSON text (OpenAI's `arguments` string).
    pub arguments: String,
}

impl Call {
    /// The call in a response message, with its id.
    pub fn json(&self, id: &str) -> Value {
        json!({"id": id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}})
    }
}

/// The call a JSON value describes, if it names an offered function.
fn call_of(v: &Value, names: &[String], args_key: &str) -> Option<Call> {
    let name = v.get("name")?.as_str()?;
    if !names.iter().any(|n| n == name) {
        return None;
    }
    let args = v.get(args_key).or_else(|| v.get("arguments")).cloned().unwrap_or(json!({}));
    // Some models write the arguments as a JSON string.
    let args = match args {
        Value::String(s) => serde_json::from_str::<Value>(&s).ok().filter(Value::is_object)?,
        Value::Object(_) => args,
        _ => return None,
    };
    Some(Call { name: name.to_string(), arguments: args.to_string() })
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// Parses one choice's output as it streams.
pub struct ToolParser {
    format: ToolFormat,
    names: Vec<String>,
    buf: String,
    /// Hermes: inside a `<tool_call>` block. Llama3: the output began with
    /// `{`, so it is held until the end.
    in_call: bool,
    /// Llama3: a non-blank character decided the mode.
    decided: bool,
    /// Calls found so far.
    pub calls: usize,
}

/// What a piece of output released: content text and whole calls.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub content: String,
    pub calls: Vec<Call>,
}

impl ToolParser {
    pub fn new(tools: &Tools) -> Self {
        ToolParser { format: tools.format, names: tools.functions.iter().map(|f| f.name.clone()).collect(), buf: String::new(), in_call: false, decided: false, calls: 0 }
    }

    /// Feeds released text.
    pub fn push(&mut self, text: &str) -> Parsed {
        self.buf.push_str(text);
        let mut out = Parsed::default();
        match self.format {
            ToolFormat::Hermes => self.hermes(&mut out, false),
            ToolFormat::Llama3 => {
                if !self.decided {
                    match self.buf.trim_start().chars().next() {
                        None => return out,
                        Some(c) => {
                            self.decided = true;
                            self.in_call = c == '{';
                        }
                    }
                }
                if !self.in_call {
                    out.content = std::mem::take(&mut self.buf);
                }
            }
        }
        self.tidy(&mut out);
        out
    }

    /// The end of the output: what is still held.
    pub fn finish(&mut self) -> Parsed {
        let mut out = Parsed::default();
        match self.format {
            ToolFormat::Hermes => self.hermes(&mut out, true),
            ToolFormat::Llama3 => {
                let text = std::mem::take(&mut self.buf);
                match self.in_call.then(|| self.llama3_calls(&text)).flatten() {
                    Some(calls) => out.calls = calls,
                    None => out.content = text,
                }
            }
        }
        self.tidy(&mut out);
        out
    }

    /// Blank text between and after calls is not content.
    fn tidy(&mut self, out: &mut Parsed) {
        self.calls += out.calls.len();
        if self.calls > 0 && out.content.trim().is_empty() {
            out.content.clear();
        }
    }

    fn hermes(&mut self, out: &mut Parsed, end: bool) {
        loop {
            if !self.in_call {
                if let Some(k) = self.buf.find(OPEN) {
                    out.content.push_str(&self.buf[..k]);
                    self.buf.drain(..k + OPEN.len());
                    self.in_call = true;
                    continue;
                }
                // Hold back a tail that may be the start of `<tool_call>`.
                let keep = if end { 0 } else { (1..OPEN.len()).rev().find(|&n| self.buf.ends_with(&OPEN[..n])).unwrap_or(0) };
                let cut = self.buf.len() - keep;
                out.content.push_str(&self.buf[..cut]);
                self.buf.drain(..cut);
                return;
            }
            let (body, rest) = match self.buf.find(CLOSE) {
                Some(k) => (self.buf[..k].to_string(), self.buf[k + CLOSE.len()..].to_string()),
                // An unterminated call at the end (the model stopped right
                // after its JSON) is still a call when the JSON is whole.
                None if end => (self.buf.clone(), String::new()),
                None => return,
            };
            match serde_json::from_str::<Value>(body.trim()).ok().and_then(|v| call_of(&v, &self.names, "arguments")) {
                Some(c) => out.calls.push(c),
                None => {
                    out.content.push_str(OPEN);
                    out.content.push_str(&body);
                    if !end || self.buf.contains(CLOSE) {
                        out.content.push_str(CLOSE);
                    }
                }
            }
            self.buf = rest;
            self.in_call = false;
        }
    }

    /// `{…}; {…}` as calls, or `None` when any piece is not a call.
    fn llama3_calls(&self, text: &str) -> Option<Vec<Call>> {
        let mut calls = Vec::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            let mut it = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
            let v = it.next()?.ok()?;
            calls.push(call_of(&v, &self.names, "parameters")?);
            rest = rest[it.byte_offset()..].trim_start();
            rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
        }
        (!calls.is_empty()).then_some(calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(choice: Value, format: ToolFormat) -> Tools {
        let defs = vec![
            json!({"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}),
            json!({"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}),
        ];
        Tools::parse(Some(defs), Some(choice), None, format).unwrap().unwrap()
    }

    fn run(p: &mut ToolParser, pieces: &[&str]) -> (String, Vec<Call>) {
        let (mut content, mut calls) = (String::new(), Vec::new());
        let mut got: Vec<Parsed> = pieces.iter().map(|s| p.push(s)).collect();
        got.push(p.finish());
        for piece in got {
            content.push_str(&piece.content);
            calls.extend(piece.calls);
        }
        (content, calls)
    }

    #[test]
    fn hermes_calls_are_parsed_across_pieces_and_text_is_kept() {
        let t = tools(json!("auto"), ToolFormat::Hermes);
        let mut p = ToolParser::new(&t);
        let (content, calls) = run(&mut p, &["Let me check.\n<tool", "_call>\n{\"name\": \"get_weather\", \"argu", "ments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}</tool_call>"]);
        assert_eq!(content, "Let me check.\n");
        assert_eq!(calls, vec![Call { name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() }, Call { name: "add".into(), arguments: r#"{"a":1,"b":2}"#.into() }]);
        // Plain text passes through, including a `<` that starts no call.
        let mut p = ToolParser::new(&t);
        assert_eq!(run(&mut p, &["1 <", " 2 and <tool", "s>"]), ("1 < 2 and <tools>".to_string(), vec![]));
        // A block that is not a call of an offered function stays text.
        let mut p = ToolParser::new(&t);
        let (content, calls) = run(&mut p, &["<tool_call>{\"name\": \"rm\", \"arguments\": {}}</tool_call>"]);
        assert_eq!((content.as_str(), calls.len()), ("<tool_call>{\"name\": \"rm\", \"arguments\": {}}</tool_call>", 0));
        // An unterminated block at the end is a call when its JSON is whole.
        let mut p = ToolParser::new(&t);
        assert_eq!(run(&mut p, &["<tool_call>\n{\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 3}\"}"]).1, vec![Call { name: "add".into(), arguments: r#"{"a":3}"#.into() }]);
    }

    #[test]
    fn llama3_calls_are_json_objects_separated_by_semicolons() {
        let t = tools(json!("auto"), ToolFormat::Llama3);
        let mut p = ToolParser::new(&t);
        let (content, calls) = run(&mut p, &["  {\"name\": \"add\", \"parameters\": {\"a\": 1}}", "; {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}"]);
        assert_eq!((content.as_str(), calls.len()), ("", 2));
        assert_eq!(calls[1].arguments, r#"{"city":"Oslo"}"#);
        let mut p = ToolParser::new(&t);
        assert_eq!(run(&mut p, &["{not json} at all"]), ("{not json} at all".to_string(), vec![]));
        let mut p = ToolParser::new(&t);
        assert_eq!(run(&mut p, &["Sure: ", "{\"name\": \"add\"}"]).1.len(), 0);
    }

    #[test]
    fn bad_tool_fields_are_refused_with_the_parameter_named() {
        let f = |tools: Value, choice: Value| Tools::parse(serde_json::from_value(tools).unwrap(), serde_json::from_value(choice).unwrap(), None, ToolFormat::Hermes).map(|_| ()).unwrap_err();
        let ok = json!([{"type": "function", "function": {"name": "f"}}]);
        assert_eq!(f(json!(null), json!("required")).param.as_deref(), Some("tool_choice"));
        assert!(f(json!([{"type": "retrieval", "function": {"name": "f"}}]), json!(null)).message.contains("retrieval"));
        assert!(f(json!([{"type": "function", "function": {"name": "a b"}}]), json!(null)).message.contains("a b"));
        assert!(f(json!([{"type": "function", "function": {"name": "f", "parameters": 3}}]), json!(null)).message.contains("parameters"));
        assert!(f(ok.clone(), json!({"type": "function", "function": {"name": "g"}})).message.contains("`g`"));
        assert!(f(ok.clone(), json!("sometimes")).message.contains("sometimes"));
        assert!(f(json!([{"type": "function", "function": {"name": "f", "nme": 1}}]), json!(null)).message.contains("nme"));
    }

    #[test]
    fn grammars_constrain_required_and_named_choices_only() {
        assert!(tools(json!("auto"), ToolFormat::Hermes).grammar().is_none());
        assert!(tools(json!("none"), ToolFormat::Hermes).for_template().is_none());
        let g = tools(json!("required"), ToolFormat::Hermes).grammar().unwrap();
        assert!(g.starts_with("start: call (\"\\n\" call)*\n") && g.contains("get_weather") && g.contains("\"add\""), "{g}");
        let g = tools(json!({"type": "function", "function": {"name": "add"}}), ToolFormat::Llama3).grammar().unwrap();
        assert!(g.contains("\"parameters\"") && !g.contains("get_weather"), "{g}");
    }

    /// Whether llguidance, over a vocabulary of single bytes, lets `text`
    /// through the grammar and then allows the end.
    fn accepts(grammar: &str, text: &str) -> bool {
        use aerie_engine::grammar::{ConstraintSpec, GrammarCompiler};
        let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        words.push(vec![0xff, b'e', b'o', b's']); // the special end token
        let eos = 256;
        let g = GrammarCompiler::from_token_bytes(&words, eos, None).unwrap().compile(&ConstraintSpec::Ebnf(grammar.into())).unwrap();
        let mut st = g.start().unwrap();
        let mut logits = vec![0f32; words.len()];
        for &b in text.as_bytes() {
            logits.fill(0.0);
            st.mask_after(&[], &mut logits, &[eos]);
            if logits[b as usize] == f32::NEG_INFINITY {
                return false;
            }
            st.commit(&[b as u32]);
        }
        logits.fill(0.0);
        st.mask_after(&[], &mut logits, &[eos]);
        logits[eos as usize] == 0.0
    }

    #[test]
    fn the_grammars_compile_and_admit_exactly_valid_calls() {
        let g = tools(json!("required"), ToolFormat::Hermes).grammar().unwrap();
        let weather = "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}\n</tool_call>";
        let add = "<tool_call>\n{\"name\":\"add\",\"arguments\":{\"a\":1,\"b\":2}}\n</tool_call>";
        assert!(accepts(&g, weather));
        assert!(accepts(&g, &format!("{weather}\n{add}")), "parallel calls");
        assert!(!accepts(&g, "<tool_call>\n{\"name\":\"rm\",\"arguments\":{}}\n</tool_call>"), "an unknown function");
        assert!(!accepts(&g, "<tool_call>\n{\"name\":\"add\",\"arguments\":{\"a\":\"one\"}}\n</tool_call>"), "a string for an integer");
        assert!(!accepts(&g, "Sure!"), "text instead of a call");
        let mut one = tools(json!({"type": "function", "function": {"name": "add"}}), ToolFormat::Hermes);
        one.parallel = false;
        let g = one.grammar().unwrap();
        assert!(accepts(&g, add) && !accepts(&g, weather) && !accepts(&g, &format!("{add}\n{add}")));
        let g = tools(json!("required"), ToolFormat::Llama3).grammar().unwrap();
        assert!(accepts(&g, "{\"name\":\"add\",\"parameters\":{\"a\":1,\"b\":2}}; {\"name\":\"get_weather\",\"parameters\":{\"city\":\"Rome\"}}"));
    }
}

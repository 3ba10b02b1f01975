//! Generation programs: messages whose last assistant turn mixes literal
//! text with named `gen` fields.
//!
//! ```
//! use aerie_client::{gen, Program};
//! let p = Program::builder()
//!     .user("Describe a character.")
//!     .assistant(["Name: ".into(), gen("name").stop("\n").into(), "Job: ".into(), gen("job").stop("\n").into()])
//!     .build()
//!     .unwrap();
//! assert_eq!(p.field_names(), ["name", "job"]);
//! ```
//!
//! Rules, checked by [`ProgramBuilder::build`]: every gen sits in one
//! assistant turn, which is the last message; a gen that is not the last
//! term of that turn has a stop string; field names are unique.

use crate::error::ProgramError;

/// Sampling settings of one gen (OpenAI semantics; `None` = server default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
}

/// A named field the model fills.
#[derive(Debug, Clone, PartialEq)]
pub struct Gen {
    pub name: String,
    /// Where the field ends; the earliest occurrence wins (the longest
    /// among those starting at the same place). Not part of the value.
    pub stops: Vec<String>,
    /// Most tokens for this field in a per-field call. Default 128.
    pub max_tokens: u32,
    pub sampling: Sampling,
}

/// Starts a gen named `name`: no stop, 128 tokens, server-default sampling.
pub fn gen(name: &str) -> Gen {
    Gen { name: name.to_string(), stops: Vec::new(), max_tokens: 128, sampling: Sampling::default() }
}

impl Gen {
    /// Adds a stop string.
    pub fn stop(mut self, s: &str) -> Self {
        self.stops.push(s.to_string());
        self
    }
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = n;
        self
    }
    pub fn temperature(mut self, t: f32) -> Self {
        self.sampling.temperature = Some(t);
        self
    }
    pub fn top_p(mut self, p: f32) -> Self {
        self.sampling.top_p = Some(p);
        self
    }
    pub fn seed(mut self, s: i64) -> Self {
        self.sampling.seed = Some(s);
        self
    }
}

/// One piece of an assistant turn.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    /// Text the program writes itself.
    Text(String),
    Gen(Gen),
}

impl From<&str> for Term {
    fn from(s: &str) -> Self {
        Term::Text(s.to_string())
    }
}
impl From<String> for Term {
    fn from(s: String) -> Self {
        Term::Text(s)
    }
}
impl From<Gen> for Term {
    fn from(g: Gen) -> Self {
        Term::Gen(g)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// A message: fixed text, or for the generating turn, terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub terms: Vec<Term>,
}

/// A validated program. Built with [`Program::builder`].
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    /// The conversation before the generating turn (plain text).
    pub(crate) history: Vec<(Role, String)>,
    /// The generating assistant turn.
    pub(crate) turn: Vec<Term>,
}

impl Program {
    pub fn builder() -> ProgramBuilder {
        ProgramBuilder::default()
    }
    /// Field names in program order.
    pub fn field_names(&self) -> Vec<&str> {
        self.gens().map(|g| g.name.as_str()).collect()
    }
    pub(crate) fn gens(&self) -> impl Iterator<Item = &Gen> {
        self.turn.iter().filter_map(|t| match t {
            Term::Gen(g) => Some(g),
            Term::Text(_) => None,
        })
    }
    /// The terms of the generating turn.
    pub fn turn(&self) -> &[Term] {
        &self.turn
    }
    /// The messages before the generating turn.
    pub fn history(&self) -> &[(Role, String)] {
        &self.history
    }
}

#[derive(Debug, Default)]
pub struct ProgramBuilder {
    messages: Vec<Message>,
}

impl ProgramBuilder {
    pub fn system(self, text: &str) -> Self {
        self.message(Role::System, vec![Term::from(text)])
    }
    pub fn user(self, text: &str) -> Self {
        self.message(Role::User, vec![Term::from(text)])
    }
    /// An assistant turn: literal text and gens.
    pub fn assistant<I: IntoIterator<Item = Term>>(self, terms: I) -> Self {
        self.message(Role::Assistant, terms.into_iter().collect())
    }
    /// Earlier turns, for example a previous program's
    /// [`history`](crate::ProgramResult::history).
    pub fn history(mut self, turns: &[(Role, String)]) -> Self {
        for (role, text) in turns {
            self = self.message(*role, vec![Term::Text(text.clone())]);
        }
        self
    }
    fn message(mut self, role: Role, terms: Vec<Term>) -> Self {
        self.messages.push(Message { role, terms });
        self
    }

    pub fn build(self) -> Result<Program, ProgramError> {
        let has_gen = |m: &Message| m.terms.iter().any(|t| matches!(t, Term::Gen(_)));
        let turns: Vec<usize> = self.messages.iter().enumerate().filter(|(_, m)| has_gen(m)).map(|(i, _)| i).collect();
        let turn = match turns[..] {
            [] => return Err(ProgramError::NoGen),
            [t] => t,
            [first, second, ..] => return Err(ProgramError::GensInSeveralTurns { first, second }),
        };
        if turn + 1 != self.messages.len() {
            return Err(ProgramError::GenTurnNotLast { turn });
        }
        // Only assistant turns can hold gens: the builder has no way to put
        // one elsewhere, so `turn` is an assistant turn here.
        let mut messages = self.messages;
        let terms = messages.pop().map(|m| m.terms).unwrap_or_default();
        let mut names: Vec<&str> = Vec::new();
        for (i, t) in terms.iter().enumerate() {
            let Term::Gen(g) = t else { continue };
            if names.contains(&g.name.as_str()) {
                return Err(ProgramError::DuplicateField { name: g.name.clone() });
            }
            names.push(&g.name);
            if g.stops.is_empty() && i + 1 != terms.len() {
                return Err(ProgramError::GenWithoutStop { name: g.name.clone() });
            }
            if g.stops.iter().any(String::is_empty) {
                return Err(ProgramError::EmptyStop { name: g.name.clone() });
            }
            if g.stops.len() > 4 {
                return Err(ProgramError::TooManyStops { name: g.name.clone(), count: g.stops.len() });
            }
            if g.max_tokens == 0 {
                return Err(ProgramError::ZeroMaxTokens { name: g.name.clone() });
            }
        }
        let history = messages
            .into_iter()
            .map(|m| {
                let text: String = m.terms.into_iter().map(|t| if let Term::Text(s) = t { s } else { String::new() }).collect();
                (m.role, text)
            })
            .collect();
        Ok(Program { history, turn: terms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_refuses_what_cannot_run() {
        let e = Program::builder().user("hi").assistant(["x".into()]).build().unwrap_err();
        assert_eq!(e, ProgramError::NoGen);
        let e = Program::builder().assistant([gen("a").into(), "then".into(), gen("b").into()]).build().unwrap_err();
        assert_eq!(e, ProgramError::GenWithoutStop { name: "a".into() });
        let e = Program::builder().assistant([gen("a").stop("\n").into()]).user("more").assistant([gen("b").into()]).build().unwrap_err();
        assert_eq!(e, ProgramError::GensInSeveralTurns { first: 0, second: 2 });
        let e = Program::builder().assistant([gen("a").into()]).user("more").build().unwrap_err();
        assert_eq!(e, ProgramError::GenTurnNotLast { turn: 0 });
        let e = Program::builder().assistant([gen("a").stop(".").into(), gen("a").into()]).build().unwrap_err();
        assert_eq!(e, ProgramError::DuplicateField { name: "a".into() });
        let e = Program::builder().assistant([gen("a").stop("").into()]).build().unwrap_err();
        assert_eq!(e, ProgramError::EmptyStop { name: "a".into() });
        let e = Program::builder().assistant([gen("a").stop("1").stop("2").stop("3").stop("4").stop("5").into()]).build().unwrap_err();
        assert!(matches!(e, ProgramError::TooManyStops { count: 5, .. }));
        let e = Program::builder().assistant([gen("a").max_tokens(0).into()]).build().unwrap_err();
        assert_eq!(e, ProgramError::ZeroMaxTokens { name: "a".into() });
        // The messages say what to do.
        assert!(ProgramError::GenWithoutStop { name: "a".into() }.to_string().contains("stop string"));
    }

    #[test]
    fn history_and_turn_are_split() {
        let p = Program::builder().system("sys").user("q").assistant(["A: ".into(), gen("a").into()]).build().unwrap();
        assert_eq!(p.history(), [(Role::System, "sys".to_string()), (Role::User, "q".to_string())]);
        assert_eq!(p.turn().len(), 2);
        assert_eq!(p.field_names(), ["a"]);
    }
}

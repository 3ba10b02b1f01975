//! The client's errors: one enum for building a program, one for running it.

/// A program that cannot be run, refused when it is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgramError {
    #[error("the program has no gen: nothing to generate")]
    NoGen,
    #[error("gen `{name}` is not the last term of its turn, so it needs a stop string (where else would it end?)")]
    GenWithoutStop { name: String },
    #[error("gens appear in assistant turns {first} and {second}; all gens of a program must be in one assistant turn (run a second program for the next turn; see ProgramResult::history)")]
    GensInSeveralTurns { first: usize, second: usize },
    #[error("the assistant turn with gens (message {turn}) must be the last message of the program")]
    GenTurnNotLast { turn: usize },
    #[error("gen `{name}` appears twice; field names must be unique")]
    DuplicateField { name: String },
    #[error("gen `{name}` has an empty stop string")]
    EmptyStop { name: String },
    #[error("gen `{name}` has {count} stop strings; the OpenAI API takes at most 4")]
    TooManyStops { name: String, count: usize },
    #[error("gen `{name}` has max_tokens 0")]
    ZeroMaxTokens { name: String },
    #[error("speculative mode runs all gens in one call, so they must share sampling settings; gen `{name}` differs from the first gen")]
    MixedSampling { name: String },
    #[error("speculative mode needs num_api_spec_tokens of at least 1")]
    ZeroSpecTokens,
}

/// A failure while running a program against a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Program(#[from] ProgramError),
    /// The server answered with an error status (OpenAI error schema).
    #[error("API error {status} ({kind}{}): {message}", code.as_deref().map(|c| format!(", {c}")).unwrap_or_default())]
    Api { status: u16, message: String, kind: String, code: Option<String>, param: Option<String> },
    /// No answer within the configured timeout.
    #[error("request timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// Connection refused, reset, DNS, …
    #[error("HTTP transport error: {0}")]
    Transport(String),
    /// The server answered 2xx with something that is not an OpenAI response.
    #[error("malformed response from the server: {0}")]
    Protocol(String),
}

impl ClientError {
    /// A stable label for metrics and logs.
    pub fn error_type(&self) -> &'static str {
        match self {
            ClientError::Program(_) => "program",
            ClientError::Api { .. } => "api",
            ClientError::Timeout(_) => "timeout",
            ClientError::Transport(_) => "transport",
            ClientError::Protocol(_) => "protocol",
        }
    }
}

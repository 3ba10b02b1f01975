//! Ready-made programs: the character example (SGLang's API-speculation
//! demo, with a few-shot line), a two-question conversation, and the
//! 20-program benchmark set.

use crate::program::{gen, Program, ProgramBuilder, Role};

/// The character request with its one-line few-shot example.
pub const CHARACTER_PROMPT: &str = "Construct a character within the following format:\nName: Steve Jobs.\nBirthday: February 24, 1955.\nJob: Apple CEO.\n\nPlease generate new Name, Birthday and Job.\n";

/// The character program for a given kind of person ("" for any).
pub fn character_of(kind: &str) -> Program {
    let ask = if kind.is_empty() { CHARACTER_PROMPT.to_string() } else { format!("{CHARACTER_PROMPT}The new character is a {kind}.\n") };
    Program::builder()
        .user(&ask)
        .assistant([
            "Name:".into(),
            gen("name").stop("\n").max_tokens(24).temperature(0.0).into(),
            "\nBirthday:".into(),
            gen("birthday").stop("\n").max_tokens(24).temperature(0.0).into(),
            "\nJob:".into(),
            gen("job").stop("\n").max_tokens(24).temperature(0.0).into(),
        ])
        .build()
        .expect("a valid program")
}

/// The character program: name, birthday and job.
pub fn character() -> Program {
    character_of("")
}

/// The first turn of the two-question conversation.
pub fn first_question() -> Program {
    Program::builder()
        .system("You are a helpful assistant. Answer briefly.")
        .user("What is the capital of France?")
        .assistant(["The capital of France is".into(), gen("capital").stop(".").stop("\n").max_tokens(16).temperature(0.0).into()])
        .build()
        .expect("a valid program")
}

/// The second turn, after `history` (the first turn's result history).
pub fn second_question(history: &[(Role, String)]) -> Program {
    ProgramBuilder::default()
        .history(history)
        .user("Name two famous landmarks there, one per line, as 'Landmark 1:' and 'Landmark 2:'.")
        .assistant([
            "Landmark 1:".into(),
            gen("landmark_1").stop("\n").max_tokens(24).temperature(0.0).into(),
            "\nLandmark 2:".into(),
            gen("landmark_2").stop("\n").max_tokens(24).temperature(0.0).into(),
        ])
        .build()
        .expect("a valid program")
}

/// Twenty character programs, one per kind of person.
pub fn bench_programs() -> Vec<Program> {
    [
        "scientist", "chef", "pilot", "painter", "farmer", "teacher", "nurse", "architect", "poet", "firefighter", "lawyer", "astronaut", "musician", "carpenter",
        "journalist", "sailor", "librarian", "programmer", "gardener", "baker",
    ]
    .iter()
    .map(|k| character_of(k))
    .collect()
}

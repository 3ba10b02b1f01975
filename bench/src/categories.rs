//! Built-in prompt sets by how predictable the answer is. Speculation pays
//! when the draft can guess the next tokens, so the speedup is expected to
//! fall from the first set to the last:
//! - `predictable`: lists, counting, fixed formats, copying;
//! - `semi-predictable`: code and step-by-step explanations;
//! - `creative`: stories and poems.

use crate::dataset::Prompt;

const PREDICTABLE: &[&str] = &[
    "Count from 1 to 40, separated by commas.",
    "List the days of the week, one per line, then list them again in reverse order.",
    "Write the English alphabet in upper case, one letter per line.",
    "List the twelve months of the year with the number of days in each, one per line.",
    "Write the multiplication table of 7 from 7 x 1 to 7 x 12, one line each.",
    "List the first 20 even numbers, separated by spaces.",
    "Repeat the sentence 'The quick brown fox jumps over the lazy dog.' five times, one per line.",
    "List the planets of the solar system in order from the Sun, numbered.",
];

const SEMI_PREDICTABLE: &[&str] = &[
    "Write a Python function that checks whether a string is a palindrome, with a docstring.",
    "Explain step by step how to convert 98.6 degrees Fahrenheit to Celsius.",
    "Write a JavaScript function that returns the largest number in an array.",
    "Explain step by step how a bubble sort orders the list 5, 2, 9, 1.",
    "Write a SQL query that returns the ten customers with the highest total order value.",
    "Explain how to make a cup of tea, as numbered steps.",
    "Write a Python class for a stack with push, pop and peek methods.",
    "Explain step by step how to solve the equation 3x + 7 = 22.",
];

const CREATIVE: &[&str] = &[
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Write a poem about the first snow of winter.",
    "Invent a new holiday and describe how people celebrate it.",
    "Write a short fable about a clever crow and a proud peacock.",
    "Describe a city on the Moon in the year 2300 as a travel writer would.",
    "Write a limerick about a cat who learns to play the piano.",
    "Write the opening paragraph of a mystery novel set on a night train.",
    "Write a letter from a dragon to the knight who keeps disturbing its sleep.",
];

/// All built-in prompts, set by set.
pub fn prompts() -> Vec<Prompt> {
    [("predictable", PREDICTABLE), ("semi-predictable", SEMI_PREDICTABLE), ("creative", CREATIVE)]
        .iter()
        .flat_map(|(cat, list)| list.iter().enumerate().map(move |(i, t)| Prompt { id: format!("{cat}-{i}"), category: cat.to_string(), text: t.to_string() }))
        .collect()
}

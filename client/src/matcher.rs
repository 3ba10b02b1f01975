//! Matching one speculative reply against the terms of a turn.
//!
//! Strategy: walk the reply left to right, term by term.
//! - A literal matches word for word. Whitespace is loose at the edges
//!   (any amount, including none, before and after a literal) and inside
//!   (a run of whitespace matches any non-empty run), because models and
//!   tokenizers disagree about spaces and newlines far more often than about
//!   words. Anything else is a mismatch.
//! - A gen takes the text up to its earliest stop string (the longest one
//!   if several start there). The stop is consumed unless the next literal
//!   itself begins with it. The value is trimmed of surrounding whitespace.
//! - A gen with no stop (only allowed last) takes the rest of the reply.
//! - If the model ends its turn inside a gen, that gen takes the rest, as
//!   it would in a per-field call, and the terms after it are unfilled.
//!
//! The outcome says where matching stopped and why, so the executor can
//! continue from exactly that point with per-field calls. With an open
//! reply (still streaming), anything undecided is `NeedMore`, so completed
//! fields can be delivered early and a mismatch can end the call early.

use crate::program::Term;

/// How the reply being matched ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Still streaming: more text may come.
    Open,
    /// The model ended its turn (`finish_reason: stop`).
    Stop,
    /// The token budget ran out (`finish_reason: length`).
    Length,
}

/// Where matching stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every term matched.
    Complete,
    /// Term `term` is a literal the reply does not match.
    Mismatch { term: usize },
    /// The reply ended (the model's turn is over) before term `term`.
    EndedBefore { term: usize },
    /// The token budget ran out inside gen `term`, which has `partial` so far.
    Truncated { term: usize, partial: String },
    /// Undecided at term `term` until more of the reply arrives.
    NeedMore { term: usize },
}

/// Fields filled (term index, value) and where matching stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub fields: Vec<(usize, String)>,
    pub outcome: Outcome,
}

enum Lit {
    /// Matched; this many bytes consumed.
    Matched(usize),
    Mismatch,
    /// The reply ends in the middle of the literal.
    Incomplete,
}

fn skip_ws(s: &str) -> usize {
    s.len() - s.trim_start().len()
}

/// Matches literal `lit` at the start of `s` with loose whitespace.
fn match_literal(lit: &str, s: &str) -> Lit {
    let mut pos = skip_ws(s);
    for (i, word) in lit.split_whitespace().enumerate() {
        if i > 0 {
            let ws = skip_ws(&s[pos..]);
            if pos == s.len() {
                return Lit::Incomplete;
            }
            if ws == 0 {
                return Lit::Mismatch;
            }
            pos += ws;
        }
        let rest = &s[pos..];
        if rest.starts_with(word) {
            pos += word.len();
        } else if word.starts_with(rest) {
            return Lit::Incomplete;
        } else {
            return Lit::Mismatch;
        }
    }
    Lit::Matched(pos + skip_ws(&s[pos..]))
}

/// The earliest stop in `s` (longest among those starting there): (at, len).
pub fn find_stop(s: &str, stops: &[String]) -> Option<(usize, usize)> {
    stops.iter().filter_map(|st| s.find(st.as_str()).map(|at| (at, st.len()))).min_by_key(|&(at, len)| (at, std::cmp::Reverse(len)))
}

/// Matches `reply` against `terms[start..]`.
pub fn match_reply(terms: &[Term], start: usize, reply: &str, finish: Finish) -> Matched {
    let mut fields = Vec::new();
    let mut pos = 0;
    let open = finish == Finish::Open;
    for k in start..terms.len() {
        let rest = &reply[pos..];
        let outcome = match &terms[k] {
            Term::Text(lit) => {
                if rest.trim().is_empty() && !lit.trim().is_empty() {
                    match finish {
                        Finish::Open => Some(Outcome::NeedMore { term: k }),
                        Finish::Stop => Some(Outcome::EndedBefore { term: k }),
                        Finish::Length => Some(Outcome::Mismatch { term: k }),
                    }
                } else {
                    match match_literal(lit, rest) {
                        Lit::Matched(n) => {
                            pos += n;
                            None
                        }
                        Lit::Incomplete if open => Some(Outcome::NeedMore { term: k }),
                        Lit::Incomplete | Lit::Mismatch => Some(Outcome::Mismatch { term: k }),
                    }
                }
            }
            Term::Gen(g) => match find_stop(rest, &g.stops) {
                Some((at, len)) => {
                    // A longer stop may still be completing at the very end.
                    let tail = &rest[at..];
                    let may_grow = open && at + len == rest.len() && g.stops.iter().any(|s| s.len() > len && s.starts_with(tail));
                    if may_grow {
                        Some(Outcome::NeedMore { term: k })
                    } else {
                        fields.push((k, rest[..at].trim().to_string()));
                        let stop = &rest[at..at + len];
                        let next_literal_has_it = matches!(terms.get(k + 1), Some(Term::Text(t)) if t.starts_with(stop));
                        pos += if next_literal_has_it { at } else { at + len };
                        None
                    }
                }
                None => match finish {
                    Finish::Open => Some(Outcome::NeedMore { term: k }),
                    Finish::Length => Some(Outcome::Truncated { term: k, partial: rest.to_string() }),
                    Finish::Stop => {
                        fields.push((k, rest.trim().to_string()));
                        pos = reply.len();
                        (k + 1 < terms.len()).then_some(Outcome::EndedBefore { term: k + 1 })
                    }
                },
            },
        };
        if let Some(outcome) = outcome {
            return Matched { fields, outcome };
        }
    }
    Matched { fields, outcome: Outcome::Complete }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::{gen, Term};

    fn character() -> Vec<Term> {
        vec!["Name: ".into(), gen("name").stop("\n").into(), "Birthday: ".into(), gen("birthday").stop("\n").into(), "Job: ".into(), gen("job").stop("\n").into()]
    }

    fn values(m: &Matched) -> Vec<(usize, &str)> {
        m.fields.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    #[test]
    fn an_exact_reply_fills_every_field() {
        let m = match_reply(&character(), 0, "Name: Ada Lovelace\nBirthday: 10 December 1815\nJob: mathematician\n", Finish::Stop);
        assert_eq!(values(&m), [(1, "Ada Lovelace"), (3, "10 December 1815"), (5, "mathematician")]);
        assert_eq!(m.outcome, Outcome::Complete);
    }

    #[test]
    fn whitespace_is_loose_at_literal_edges_and_inside_runs() {
        let terms: Vec<Term> = vec!["Full  name:".into(), gen("name").stop(";").into(), " Age:\n".into(), gen("age").into()];
        let m = match_reply(&terms, 0, "  Full name:\tAda ;Age: 36", Finish::Stop);
        assert_eq!(values(&m), [(1, "Ada"), (3, "36")]);
        assert_eq!(m.outcome, Outcome::Complete);
        // But a missing separator between words is a mismatch.
        let m = match_reply(&terms, 0, "Fullname: Ada;", Finish::Stop);
        assert_eq!(m.outcome, Outcome::Mismatch { term: 0 });
    }

    #[test]
    fn a_literal_mismatch_keeps_the_fields_before_it() {
        let m = match_reply(&character(), 0, "Name: Ada\nBorn: 1815\nJob: maths\n", Finish::Stop);
        assert_eq!(values(&m), [(1, "Ada")]);
        assert_eq!(m.outcome, Outcome::Mismatch { term: 2 });
        // From the very start.
        let m = match_reply(&character(), 0, "Sure! Here is a character:\nName: Ada\n", Finish::Stop);
        assert!(m.fields.is_empty());
        assert_eq!(m.outcome, Outcome::Mismatch { term: 0 });
    }

    #[test]
    fn a_missing_stop_is_truncation_or_the_end_of_the_turn() {
        // Budget ran out inside `birthday`: its partial text is kept for continuing.
        let m = match_reply(&character(), 0, "Name: Ada\nBirthday: 10 Dec", Finish::Length);
        assert_eq!(values(&m), [(1, "Ada")]);
        assert_eq!(m.outcome, Outcome::Truncated { term: 3, partial: "10 Dec".into() });
        // The model ended its turn inside `birthday`: it takes the rest, the job is unfilled.
        let m = match_reply(&character(), 0, "Name: Ada\nBirthday: 1815", Finish::Stop);
        assert_eq!(values(&m), [(1, "Ada"), (3, "1815")]);
        assert_eq!(m.outcome, Outcome::EndedBefore { term: 4 });
        // The model ended right after a field.
        let m = match_reply(&character(), 0, "Name: Ada\n", Finish::Stop);
        assert_eq!(m.outcome, Outcome::EndedBefore { term: 2 });
        // Budget ran out inside a literal: a mismatch there.
        let m = match_reply(&character(), 0, "Name: Ada\nBirth", Finish::Length);
        assert_eq!(m.outcome, Outcome::Mismatch { term: 2 });
    }

    #[test]
    fn the_last_gen_without_stop_takes_the_rest() {
        let terms: Vec<Term> = vec!["Q: 2+2? A:".into(), gen("a").stop("\n").into(), "Why:".into(), gen("why").into()];
        let m = match_reply(&terms, 0, "Q: 2+2? A: 4\nWhy: because\n2 and 2\nmake 4.", Finish::Stop);
        assert_eq!(values(&m), [(1, "4"), (3, "because\n2 and 2\nmake 4.")]);
        assert_eq!(m.outcome, Outcome::Complete);
        // Cut by the budget, it is truncated, not silently complete.
        let m = match_reply(&terms, 0, "Q: 2+2? A: 4\nWhy: because", Finish::Length);
        assert_eq!(m.outcome, Outcome::Truncated { term: 3, partial: "because".into() });
    }

    #[test]
    fn unicode_text_and_stops() {
        let terms: Vec<Term> = vec!["Nom :".into(), gen("nom").stop("。").into(), "Ville :".into(), gen("ville").stop("🏁").into()];
        let m = match_reply(&terms, 0, "Nom : Zoë Ŝtraße。Ville : 東京🏁", Finish::Stop);
        assert_eq!(values(&m), [(1, "Zoë Ŝtraße"), (3, "東京")]);
        assert_eq!(m.outcome, Outcome::Complete);
        // A multi-byte mismatch is a mismatch, not a panic.
        let m = match_reply(&terms, 0, "Nöm : x。", Finish::Stop);
        assert_eq!(m.outcome, Outcome::Mismatch { term: 0 });
    }

    #[test]
    fn stop_strings_that_are_prefixes_of_each_other() {
        // At the same place the longest stop wins and is consumed whole.
        let terms: Vec<Term> = vec![gen("a").stop("\n").stop("\n\n").into(), "B:".into(), gen("b").stop("--").stop("-").into(), "C".into(), gen("c").into()];
        let m = match_reply(&terms, 0, "one\n\nB: two--C three", Finish::Stop);
        assert_eq!(values(&m), [(0, "one"), (2, "two"), (4, "three")]);
        // The earliest stop wins even if a longer one comes later.
        let m = match_reply(&terms, 0, "one\nx\n\nB: two-C three", Finish::Stop);
        assert_eq!(values(&m)[0], (0, "one"));
        assert_eq!(m.outcome, Outcome::Mismatch { term: 1 });
        // While streaming, "one\n" might still become "one\n\n": undecided.
        let m = match_reply(&terms, 0, "one\n", Finish::Open);
        assert_eq!(m.outcome, Outcome::NeedMore { term: 0 });
        assert!(m.fields.is_empty());
        // A gen's stop may be the next literal's start: it stays for the literal.
        let terms: Vec<Term> = vec![gen("x").stop(".").into(), ". Next:".into(), gen("y").into()];
        let m = match_reply(&terms, 0, "a.b. Next: c", Finish::Stop);
        assert_eq!(m.outcome, Outcome::Mismatch { term: 1 }, "the stop at `a.` is followed by `b`, not `. Next`");
        let m = match_reply(&terms, 0, "ab. Next: c", Finish::Stop);
        assert_eq!(values(&m), [(0, "ab"), (2, "c")]);
    }

    #[test]
    fn streaming_prefixes_deliver_completed_fields_and_defer_the_rest() {
        let full = "Name: Ada\nBirthday: 1815\nJob: maths\n";
        let mut delivered = 0;
        for end in (0..=full.len()).filter(|&e| full.is_char_boundary(e)) {
            let m = match_reply(&character(), 0, &full[..end], Finish::Open);
            // A streaming prefix never mismatches a reply that will match.
            assert!(matches!(m.outcome, Outcome::NeedMore { .. } | Outcome::Complete), "{end}: {:?}", m.outcome);
            assert!(m.fields.len() >= delivered, "fields never disappear");
            delivered = m.fields.len();
        }
        assert_eq!(delivered, 3);
        // A mismatch is seen as soon as the text diverges.
        let m = match_reply(&character(), 0, "Name: Ada\nBorn", Finish::Open);
        assert_eq!(m.outcome, Outcome::Mismatch { term: 2 });
    }

    #[test]
    fn matching_can_start_at_any_term() {
        let m = match_reply(&character(), 3, " 1815\nJob: maths\n", Finish::Stop);
        assert_eq!(values(&m), [(3, "1815"), (5, "maths")]);
        assert_eq!(m.outcome, Outcome::Complete);
    }
}

//! Non-streamed answers: every choice and every text-bearing field becomes a part
//! the guard validates, and the answer the caller gets is rebuilt from the
//! validated parts (allow-listed: unknown fields, `logprobs` and audio never pass).

use serde_json::Value;

use super::Endpoint;
use crate::response::{GuardResponse, ToolCall, Usage};

/// The part index of each text-bearing field of one choice.
#[derive(Debug, Default)]
struct Choice {
    index: u64,
    finish: Option<String>,
    /// Content, tool calls and finish reason.
    main: usize,
    content_null: bool,
    legacy_function: bool,
    refusal: Option<usize>,
    reasoning: Option<usize>,
}

#[derive(Debug)]
pub(super) struct Parsed {
    endpoint: Endpoint,
    /// `created`, the one upstream head field kept (the id and model are the
    /// guard's: upstream strings there would reach the caller unvalidated).
    created: Option<u64>,
    choices: Vec<Choice>,
    parts: Vec<GuardResponse>,
    embeddings: Vec<Value>,
    usage: Option<(u64, u64)>,
}

/// An identifier-like string (ids, finish reasons): short, and only characters
/// that cannot carry markup or prose.
fn ident(s: &str, max: usize) -> Option<&str> {
    (s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/')))
    .then_some(s)
}

fn text_of(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        // Content parts in an answer: the text parts, joined.
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    }
}

impl Parsed {
    /// Parses an upstream answer. `Err` carries the usage the upstream reported, if
    /// any could be read, for settling the budget of an unreadable answer.
    pub(super) fn parse(endpoint: Endpoint, bytes: &[u8]) -> Result<Self, Option<Usage>> {
        let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(bytes) else {
            return Err(None);
        };
        let usage = obj.get("usage").and_then(|u| {
            let p = u.get("prompt_tokens")?.as_u64()?;
            let c = u
                .get("completion_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            Some((p, c))
        });
        let fail = || usage.map(|(p, c)| Usage::new(p, c));
        let created = obj.get("created").and_then(Value::as_u64);
        let mut out = Self {
            endpoint,
            created,
            choices: Vec::new(),
            parts: Vec::new(),
            embeddings: Vec::new(),
            usage,
        };
        if endpoint == Endpoint::Embeddings {
            let Some(Value::Array(data)) = obj.remove("data") else {
                return Err(fail());
            };
            for d in data {
                let e = d.get("embedding").cloned().unwrap_or(Value::Null);
                let ok = match &e {
                    Value::Array(a) => a.iter().all(Value::is_number),
                    Value::String(s) => s
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')),
                    _ => false,
                };
                if !ok {
                    return Err(fail());
                }
                out.embeddings.push(e);
            }
            return Ok(out);
        }
        let Some(Value::Array(choices)) = obj.remove("choices") else {
            return Err(fail());
        };
        for (n, c) in choices.into_iter().enumerate() {
            let Value::Object(mut c) = c else {
                return Err(fail());
            };
            let mut choice = Choice {
                index: c.get("index").and_then(Value::as_u64).unwrap_or(n as u64),
                finish: c
                    .get("finish_reason")
                    .and_then(Value::as_str)
                    .and_then(|s| ident(s, 32))
                    .map(str::to_owned),
                main: out.parts.len(),
                ..Choice::default()
            };
            if endpoint == Endpoint::Completions {
                let Some(Value::String(t)) = c.remove("text") else {
                    return Err(fail());
                };
                out.parts.push(GuardResponse::new(t));
                out.choices.push(choice);
                continue;
            }
            let Some(Value::Object(mut m)) = c.remove("message") else {
                return Err(fail());
            };
            // The texts are taken out of the tree, not copied.
            let content = match m.remove("content") {
                None | Some(Value::Null) => {
                    choice.content_null = true;
                    String::new()
                }
                Some(v) => text_of(v).ok_or_else(fail)?,
            };
            let mut main = GuardResponse::new(content);
            for call in m
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let f = call.get("function");
                let (Some(name), Some(args)) = (
                    f.and_then(|f| f.get("name")).and_then(Value::as_str),
                    f.and_then(|f| f.get("arguments")).and_then(Value::as_str),
                ) else {
                    return Err(fail());
                };
                let id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .and_then(|i| ident(i, 64))
                    .map_or_else(
                        || format!("call_{}", main.tool_calls().len()),
                        str::to_owned,
                    );
                main = main.with_tool_call(ToolCall::new(id, name, args));
            }
            if let Some(f) = m.get("function_call").filter(|f| !f.is_null()) {
                let (Some(name), Some(args)) = (
                    f.get("name").and_then(Value::as_str),
                    f.get("arguments").and_then(Value::as_str),
                ) else {
                    return Err(fail());
                };
                choice.legacy_function = true;
                main = main.with_tool_call(ToolCall::new("function_call", name, args));
            }
            if let Some(f) = &choice.finish {
                main = main.with_finish_reason(f.clone());
            }
            out.parts.push(main);
            if let Some(Value::String(r)) = m.remove("refusal") {
                choice.refusal = Some(out.parts.len());
                out.parts.push(GuardResponse::new(r));
            }
            // `reasoning_content` when the field is there (whatever it holds).
            let reasoning = match m.remove("reasoning_content") {
                None => m.remove("reasoning"),
                r => r,
            };
            if let Some(Value::String(r)) = reasoning {
                choice.reasoning = Some(out.parts.len());
                out.parts.push(GuardResponse::new(r));
            }
            out.choices.push(choice);
        }
        Ok(out)
    }

    /// The parts to validate and the usage the model reported.
    pub(super) fn take_parts(&mut self) -> (Vec<GuardResponse>, Option<Usage>) {
        (
            std::mem::take(&mut self.parts),
            self.usage.map(|(p, c)| Usage::new(p, c)),
        )
    }

    /// The answer for the caller, from the validated parts, with the guard's id
    /// (the request id, as in the audit record) and the model the caller asked for.
    ///
    /// Written from borrowed parts in one pass (keys in the order a sorted map
    /// gives them, as the tree of `Value`s this replaced did: the same bytes).
    pub(super) fn rebuild(&self, parts: &[GuardResponse], id: &str, model: &str) -> Vec<u8> {
        let text = |i: usize| parts.get(i).map_or("", GuardResponse::text);
        let usage = self.usage.map(|(p, c)| match self.endpoint {
            Endpoint::Embeddings => UsageOut {
                completion_tokens: None,
                prompt_tokens: p,
                total_tokens: p,
            },
            _ => UsageOut {
                completion_tokens: Some(c),
                prompt_tokens: p,
                total_tokens: p.saturating_add(c),
            },
        });
        let prefix = match self.endpoint {
            Endpoint::ChatCompletions => "chatcmpl-",
            Endpoint::Completions => "cmpl-",
            Endpoint::Embeddings => "",
        };
        let mut out = Out {
            choices: None,
            created: self.created,
            data: None,
            id: (!prefix.is_empty()).then_some(Prefixed(prefix, id)),
            model,
            object: "list",
            usage,
        };
        match self.endpoint {
            Endpoint::Embeddings => {
                out.data = Some(
                    self.embeddings
                        .iter()
                        .enumerate()
                        .map(|(index, embedding)| EmbeddingOut {
                            embedding,
                            index,
                            object: "embedding",
                        })
                        .collect(),
                );
            }
            Endpoint::Completions => {
                out.object = "text_completion";
                out.choices = Some(
                    self.choices
                        .iter()
                        .map(|c| {
                            ChoiceOut::Text(TextChoiceOut {
                                finish_reason: c.finish.as_deref(),
                                index: c.index,
                                text: text(c.main),
                            })
                        })
                        .collect(),
                );
            }
            Endpoint::ChatCompletions => {
                out.object = "chat.completion";
                out.choices = Some(
                    self.choices
                        .iter()
                        .map(|c| {
                            let body = text(c.main);
                            let calls =
                                parts.get(c.main).map_or(&[][..], GuardResponse::tool_calls);
                            let legacy =
                                |k: &&ToolCall| c.legacy_function && k.id() == "function_call";
                            ChoiceOut::Chat(ChatChoiceOut {
                                finish_reason: c.finish.as_deref(),
                                index: c.index,
                                message: MessageOut {
                                    content: (!(c.content_null && body.is_empty())).then_some(body),
                                    function_call: calls.iter().find(legacy).map(|f| FunctionOut {
                                        arguments: f.arguments(),
                                        name: f.name(),
                                    }),
                                    reasoning_content: c.reasoning.map(text),
                                    refusal: c.refusal.map(text),
                                    role: "assistant",
                                    tool_calls: calls
                                        .iter()
                                        .filter(|k| !legacy(k))
                                        .map(|k| ToolCallOut {
                                            function: FunctionOut {
                                                arguments: k.arguments(),
                                                name: k.name(),
                                            },
                                            id: k.id(),
                                            kind: "function",
                                        })
                                        .collect(),
                                },
                            })
                        })
                        .collect(),
                );
            }
        }
        let size = parts.iter().map(|p| p.text().len()).sum::<usize>() + 256;
        let mut body = Vec::with_capacity(size);
        match serde_json::to_writer(&mut body, &out) {
            Ok(()) => body,
            Err(_) => Vec::new(),
        }
    }
}

/// `prefix` then `id`, serialized as one string.
struct Prefixed<'a>(&'a str, &'a str);

impl serde::Serialize for Prefixed<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}{}", self.0, self.1))
    }
}

// The rebuilt answer's shape. Fields are in alphabetical order (the order the
// `Value` maps this replaced wrote them in); absent optional fields are left out,
// `null`s written where the old maps held one.
#[derive(serde::Serialize)]
struct Out<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    choices: Option<Vec<ChoiceOut<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Vec<EmbeddingOut<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Prefixed<'a>>,
    model: &'a str,
    object: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
}

#[derive(serde::Serialize)]
struct UsageOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    completion_tokens: Option<u64>,
    prompt_tokens: u64,
    total_tokens: u64,
}

#[derive(serde::Serialize)]
struct EmbeddingOut<'a> {
    embedding: &'a Value,
    index: usize,
    object: &'a str,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum ChoiceOut<'a> {
    Chat(ChatChoiceOut<'a>),
    Text(TextChoiceOut<'a>),
}

#[derive(serde::Serialize)]
struct TextChoiceOut<'a> {
    finish_reason: Option<&'a str>,
    index: u64,
    text: &'a str,
}

#[derive(serde::Serialize)]
struct ChatChoiceOut<'a> {
    finish_reason: Option<&'a str>,
    index: u64,
    message: MessageOut<'a>,
}

#[derive(serde::Serialize)]
struct MessageOut<'a> {
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    function_call: Option<FunctionOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<&'a str>,
    role: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'a>>,
}

#[derive(serde::Serialize)]
struct FunctionOut<'a> {
    arguments: &'a str,
    name: &'a str,
}

#[derive(serde::Serialize)]
struct ToolCallOut<'a> {
    function: FunctionOut<'a>,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The answer written field by field is what the sorted `serde_json` maps it
    /// replaced wrote, byte for byte (the expected texts are theirs): key order,
    /// `null`s, left-out fields, escapes.
    #[test]
    fn the_rebuilt_answer_keeps_the_bytes_of_sorted_maps() {
        let cases: &[(Endpoint, &[u8], &str)] = &[
            (
                Endpoint::ChatCompletions,
                br#"{"id":"c","created":1,"choices":[{"index":0,"message":{"content":"one","audio":{}},"finish_reason":"stop"},{"index":1,"message":{"content":null,"refusal":"no","reasoning_content":"think","function_call":{"name":"f","arguments":"{}"},"tool_calls":[{"id":"t1","type":"function","function":{"name":"g","arguments":"{\"a\":1}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
                r#"{"choices":[{"finish_reason":"stop","index":0,"message":{"content":"new \"q\" \u0001 </script>","role":"assistant"}},{"finish_reason":"tool_calls","index":1,"message":{"content":null,"function_call":{"arguments":"{}","name":"f"},"reasoning_content":"think","refusal":"no","role":"assistant","tool_calls":[{"function":{"arguments":"{\"a\":1}","name":"g"},"id":"t1","type":"function"}]}}],"created":1,"id":"chatcmpl-r1","model":"m\"x","object":"chat.completion","usage":{"completion_tokens":4,"prompt_tokens":3,"total_tokens":7}}"#,
            ),
            (
                Endpoint::ChatCompletions,
                br#"{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"text":"b"}],"reasoning":"r"}},{"message":{"tool_calls":[{"function":{"name":"g","arguments":"x"}}]},"finish_reason":"bad reason!"}]}"#,
                r#"{"choices":[{"finish_reason":null,"index":0,"message":{"content":"new \"q\" \u0001 </script>","reasoning_content":"r","role":"assistant"}},{"finish_reason":null,"index":1,"message":{"content":null,"role":"assistant","tool_calls":[{"function":{"arguments":"x","name":"g"},"id":"call_0","type":"function"}]}}],"id":"chatcmpl-r1","model":"m\"x","object":"chat.completion"}"#,
            ),
            (
                Endpoint::Completions,
                br#"{"id":"x","created":5,"choices":[{"index":0,"text":"a","finish_reason":"length"},{"index":1,"text":"b"}],"usage":{"prompt_tokens":1}}"#,
                r#"{"choices":[{"finish_reason":"length","index":0,"text":"new \"q\" \u0001 </script>"},{"finish_reason":null,"index":1,"text":"b"}],"created":5,"id":"cmpl-r1","model":"m\"x","object":"text_completion","usage":{"completion_tokens":0,"prompt_tokens":1,"total_tokens":1}}"#,
            ),
            (
                Endpoint::Embeddings,
                br#"{"data":[{"embedding":[0.1,2e3,-1]},{"embedding":"QUJD"}],"usage":{"prompt_tokens":2,"completion_tokens":9},"created":3}"#,
                r#"{"created":3,"data":[{"embedding":[0.1,2000.0,-1],"index":0,"object":"embedding"},{"embedding":"QUJD","index":1,"object":"embedding"}],"model":"m\"x","object":"list","usage":{"prompt_tokens":2,"total_tokens":2}}"#,
            ),
        ];
        for (endpoint, body, expected) in cases {
            let mut p = Parsed::parse(*endpoint, body).unwrap();
            let (mut parts, _) = p.take_parts();
            if let Some(first) = parts.first_mut() {
                first.set_text("new \"q\" \u{1} </script>".into());
            }
            let out = p.rebuild(&parts, "r1", "m\"x");
            assert_eq!(String::from_utf8(out).unwrap(), *expected);
        }
    }

    /// Token counts are the upstream's numbers: a total past `u64` saturates (it
    /// overflowed: a panic in a debug build, a wrong total in a release one).
    #[test]
    fn an_upstream_usage_past_u64_saturates() {
        let body = format!(
            r#"{{"choices":[{{"message":{{"content":"a"}}}}],"usage":{{"prompt_tokens":{},"completion_tokens":2}}}}"#,
            u64::MAX
        );
        let mut p = Parsed::parse(Endpoint::ChatCompletions, body.as_bytes()).unwrap();
        let (parts, usage) = p.take_parts();
        assert_eq!(usage, Some(Usage::new(u64::MAX, 2)));
        let out: Value = serde_json::from_slice(&p.rebuild(&parts, "r1", "m")).unwrap();
        assert_eq!(out["usage"]["total_tokens"], u64::MAX);
    }

    #[test]
    fn reasoning_content_present_but_null_hides_reasoning_as_before() {
        let mut p = Parsed::parse(
            Endpoint::ChatCompletions,
            br#"{"choices":[{"message":{"content":"a","reasoning_content":null,"reasoning":"r"}}]}"#,
        )
        .unwrap();
        assert_eq!(p.take_parts().0.len(), 1);
    }

    #[test]
    fn every_choice_and_field_is_a_part_and_unknown_fields_are_dropped() {
        let body = br#"{"id":"c","object":"chat.completion","created":1,"model":"m","x-vendor":"secret",
            "choices":[
              {"index":0,"message":{"role":"assistant","content":"one","audio":{"transcript":"AKIA..."}},"logprobs":{"content":[{"token":"AKIA"}]},"finish_reason":"stop"},
              {"index":1,"message":{"role":"assistant","content":null,"refusal":"no","reasoning_content":"think",
                 "function_call":{"name":"f","arguments":"{}"},
                 "tool_calls":[{"id":"t1","type":"function","function":{"name":"g","arguments":"{\"a\":1}"}}]},"finish_reason":"tool_calls"}],
            "usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        let mut p = Parsed::parse(Endpoint::ChatCompletions, body).unwrap();
        let (parts, usage) = p.take_parts();
        assert_eq!(usage, Some(Usage::new(3, 4)));
        let texts: Vec<&str> = parts.iter().map(GuardResponse::text).collect();
        assert_eq!(texts, ["one", "", "no", "think"]);
        assert_eq!(parts[1].tool_calls().len(), 2);
        let out: Value = serde_json::from_slice(&p.rebuild(&parts, "r1", "m")).unwrap();
        assert!(out.get("x-vendor").is_none());
        assert!(out["choices"][0].get("logprobs").is_none());
        assert!(out["choices"][0]["message"].get("audio").is_none());
        assert_eq!(out["choices"][1]["message"]["content"], Value::Null);
        assert_eq!(out["choices"][1]["message"]["function_call"]["name"], "f");
        assert_eq!(out["choices"][1]["message"]["tool_calls"][0]["id"], "t1");
        assert_eq!(out["usage"]["total_tokens"], 7);
    }

    #[test]
    fn completions_and_embeddings_are_rebuilt() {
        let mut p = Parsed::parse(
            Endpoint::Completions,
            br#"{"id":"x","choices":[{"index":0,"text":"a","logprobs":{"tokens":["s"]}},{"index":1,"text":"b"}],"extra":1}"#,
        )
        .unwrap();
        let (mut parts, _) = p.take_parts();
        parts[1].set_text("B".into());
        let out: Value = serde_json::from_slice(&p.rebuild(&parts, "r1", "m")).unwrap();
        assert_eq!(out["choices"][1]["text"], "B");
        assert!(out.get("extra").is_none() && out["choices"][0].get("logprobs").is_none());
        let mut e = Parsed::parse(
            Endpoint::Embeddings,
            br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],"model":"e","usage":{"prompt_tokens":2,"total_tokens":2}}"#,
        )
        .unwrap();
        assert!(e.take_parts().0.is_empty());
        assert!(
            Parsed::parse(
                Endpoint::Embeddings,
                br#"{"data":[{"embedding":"<script>"}]}"#
            )
            .is_err()
        );
        assert!(Parsed::parse(Endpoint::ChatCompletions, b"[]").is_err());
        assert_eq!(
            Parsed::parse(
                Endpoint::ChatCompletions,
                br#"{"usage":{"prompt_tokens":5,"completion_tokens":6}}"#
            )
            .unwrap_err(),
            Some(Usage::new(5, 6))
        );
    }
}

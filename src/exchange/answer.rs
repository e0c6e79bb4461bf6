//! Non-streamed answers: every choice and every text-bearing field becomes a part
//! the guard validates, and the answer the caller gets is rebuilt from the
//! validated parts (allow-listed: unknown fields, `logprobs` and audio never pass).

use serde_json::{Map, Value, json};

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

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
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
                let Some(t) = c.get("text").and_then(Value::as_str) else {
                    return Err(fail());
                };
                out.parts.push(GuardResponse::new(t));
                out.choices.push(choice);
                continue;
            }
            let Some(Value::Object(m)) = c.remove("message") else {
                return Err(fail());
            };
            let content = match m.get("content") {
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
            if let Some(r) = m.get("refusal").and_then(Value::as_str) {
                choice.refusal = Some(out.parts.len());
                out.parts.push(GuardResponse::new(r));
            }
            let reasoning = m
                .get("reasoning_content")
                .or_else(|| m.get("reasoning"))
                .and_then(Value::as_str);
            if let Some(r) = reasoning {
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

    /// The answer for the caller, from the validated parts.
    /// The answer for the caller, from the validated parts, with the guard's id
    /// (the request id, as in the audit record) and the model the caller asked for.
    pub(super) fn rebuild(&self, parts: &[GuardResponse], id: &str, model: &str) -> Vec<u8> {
        let mut out = Map::new();
        let prefix = match self.endpoint {
            Endpoint::ChatCompletions => "chatcmpl-",
            Endpoint::Completions => "cmpl-",
            Endpoint::Embeddings => "",
        };
        if !prefix.is_empty() {
            out.insert("id".into(), Value::from(format!("{prefix}{id}")));
        }
        if let Some(c) = self.created {
            out.insert("created".into(), Value::from(c));
        }
        out.insert("model".into(), Value::from(model));
        let text = |i: usize| parts.get(i).map_or("", GuardResponse::text);
        match self.endpoint {
            Endpoint::Embeddings => {
                out.insert("object".into(), Value::from("list"));
                let data: Vec<Value> = self
                    .embeddings
                    .iter()
                    .enumerate()
                    .map(|(i, e)| json!({"object": "embedding", "index": i, "embedding": e}))
                    .collect();
                out.insert("data".into(), Value::Array(data));
                if let Some((p, _)) = self.usage {
                    out.insert(
                        "usage".into(),
                        json!({"prompt_tokens": p, "total_tokens": p}),
                    );
                }
            }
            Endpoint::Completions => {
                out.insert("object".into(), Value::from("text_completion"));
                let choices: Vec<Value> = self
                    .choices
                    .iter()
                    .map(|c| json!({"index": c.index, "text": text(c.main), "finish_reason": c.finish}))
                    .collect();
                out.insert("choices".into(), Value::Array(choices));
                self.put_usage(&mut out);
            }
            Endpoint::ChatCompletions => {
                out.insert("object".into(), Value::from("chat.completion"));
                let choices: Vec<Value> = self
                    .choices
                    .iter()
                    .map(|c| {
                        let main = parts.get(c.main);
                        let body = text(c.main);
                        let mut msg = Map::new();
                        msg.insert("role".into(), Value::from("assistant"));
                        msg.insert(
                            "content".into(),
                            if c.content_null && body.is_empty() {
                                Value::Null
                            } else {
                                Value::from(body)
                            },
                        );
                        if let Some(i) = c.refusal {
                            msg.insert("refusal".into(), Value::from(text(i)));
                        }
                        if let Some(i) = c.reasoning {
                            msg.insert("reasoning_content".into(), Value::from(text(i)));
                        }
                        let calls = main.map_or(&[][..], GuardResponse::tool_calls);
                        if c.legacy_function {
                            if let Some(f) = calls.iter().find(|k| k.id() == "function_call") {
                                msg.insert(
                                    "function_call".into(),
                                    json!({"name": f.name(), "arguments": f.arguments()}),
                                );
                            }
                        }
                        let tool_calls: Vec<Value> = calls
                            .iter()
                            .filter(|k| !(c.legacy_function && k.id() == "function_call"))
                            .map(|k| {
                                json!({"id": k.id(), "type": "function",
                                       "function": {"name": k.name(), "arguments": k.arguments()}})
                            })
                            .collect();
                        if !tool_calls.is_empty() {
                            msg.insert("tool_calls".into(), Value::Array(tool_calls));
                        }
                        json!({"index": c.index, "message": msg, "finish_reason": c.finish})
                    })
                    .collect();
                out.insert("choices".into(), Value::Array(choices));
                self.put_usage(&mut out);
            }
        }
        serde_json::to_vec(&Value::Object(out)).unwrap_or_default()
    }

    fn put_usage(&self, out: &mut Map<String, Value>) {
        if let Some((p, c)) = self.usage {
            out.insert(
                "usage".into(),
                json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! OpenAI embeddings requests for the `gemini` and `vertex` kinds: the Gemini API's `batchEmbedContents` (one
//! request per input) and Vertex AI's `predict` (one instance per input), and their answers back as an OpenAI
//! embedding list. Inputs are texts; token-id inputs and base64 output have no equivalent (another candidate may
//! serve them).

use serde_json::{Map, Value, json};

use super::AnswerError;

/// The texts of an OpenAI embeddings request, with its `dimensions`; `Err` says why a Google backend cannot serve it.
fn inputs(body: &Map<String, Value>) -> Result<(Vec<&str>, Option<u64>), String> {
    let texts = match body.get("input") {
        Some(Value::String(text)) => vec![text.as_str()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<&str>>>()
            .ok_or("gemini and vertex backends embed texts, not token ids")?,
        _ => return Err("input must be a text or a non-empty array of texts".to_owned()),
    };
    match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => {}
        Some(other) => return Err(format!("gemini and vertex backends return float embeddings, not {other}")),
    }
    Ok((texts, body.get("dimensions").and_then(Value::as_u64)))
}

/// The Gemini API's `batchEmbedContents` body for `model`.
pub fn gemini_request(body: &Map<String, Value>, model: &str) -> Result<Value, String> {
    let (texts, dimensions) = inputs(body)?;
    let requests: Vec<Value> = texts
        .iter()
        .map(|text| {
            let mut request = json!({"model": format!("models/{model}"), "content": {"parts": [{"text": text}]}});
            if let Some(dimensions) = dimensions {
                request["outputDimensionality"] = json!(dimensions);
            }
            request
        })
        .collect();
    Ok(json!({"requests": requests}))
}

/// Vertex AI's `predict` body.
pub fn vertex_request(body: &Map<String, Value>) -> Result<Value, String> {
    let (texts, dimensions) = inputs(body)?;
    let instances: Vec<Value> = texts.iter().map(|text| json!({"content": text})).collect();
    let mut request = json!({"instances": instances});
    if let Some(dimensions) = dimensions {
        request["parameters"] = json!({"outputDimensionality": dimensions});
    }
    Ok(request)
}

fn list(vectors: Vec<Value>, usage: Option<u64>) -> Value {
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| json!({"object": "embedding", "index": index, "embedding": embedding}))
        .collect();
    let mut list = json!({"object": "list", "data": data, "model": ""});
    // The Gemini API reports no token counts: metering then estimates them from the input.
    if let Some(tokens) = usage {
        list["usage"] = json!({"prompt_tokens": tokens, "total_tokens": tokens});
    }
    list
}

/// An embeddings answer (`{"embeddings": [{"values"}]}` from the Gemini API, `{"predictions": [{"embeddings":
/// {"values", "statistics": {"token_count"}}}]}` from Vertex) as an OpenAI embedding list; `None` when `answer` is
/// neither.
pub fn answer(answer: &Value) -> Option<Result<Value, AnswerError>> {
    let malformed = |what: &str| AnswerError::Malformed(format!("the embeddings answer has {what}"));
    if let Some(embeddings) = answer.get("embeddings") {
        let vectors = embeddings
            .as_array()
            .and_then(|items| items.iter().map(|e| e.get("values").filter(|v| v.is_array()).cloned()).collect())
            .ok_or_else(|| malformed("an embedding without values"));
        return Some(vectors.map(|vectors| list(vectors, None)));
    }
    let predictions = answer.get("predictions")?;
    let read = || -> Option<(Vec<Value>, u64)> {
        let mut tokens = 0u64;
        let mut vectors = Vec::new();
        for prediction in predictions.as_array()? {
            let embeddings = prediction.get("embeddings")?;
            vectors.push(embeddings.get("values").filter(|v| v.is_array())?.clone());
            let count = embeddings.pointer("/statistics/token_count").and_then(Value::as_f64).unwrap_or(0.0);
            tokens = tokens.saturating_add(count as u64);
        }
        Some((vectors, tokens))
    };
    Some(
        read()
            .map(|(vectors, tokens)| list(vectors, Some(tokens)))
            .ok_or_else(|| malformed("a prediction without values")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn requests_name_each_text() {
        let one = body(json!({"input": "hello", "dimensions": 256}));
        assert_eq!(
            gemini_request(&one, "text-embedding-004").unwrap(),
            json!({"requests": [{"model": "models/text-embedding-004", "content": {"parts": [{"text": "hello"}]},
                                 "outputDimensionality": 256}]})
        );
        let two = body(json!({"input": ["a", "b"]}));
        assert_eq!(vertex_request(&two).unwrap(), json!({"instances": [{"content": "a"}, {"content": "b"}]}));
        for refused in
            [json!({"input": [1, 2]}), json!({"input": []}), json!({"input": "x", "encoding_format": "base64"})]
        {
            assert!(gemini_request(&body(refused.clone()), "m").is_err(), "{refused}");
        }
    }

    #[test]
    fn answers_become_embedding_lists() {
        let gemini = answer(&json!({"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3]}]})).unwrap().unwrap();
        assert_eq!(gemini["data"][1], json!({"object": "embedding", "index": 1, "embedding": [0.3]}));
        assert!(gemini.get("usage").is_none());
        let vertex = answer(&json!({"predictions": [
            {"embeddings": {"values": [0.5], "statistics": {"token_count": 3.0, "truncated": false}}},
            {"embeddings": {"values": [0.6], "statistics": {"token_count": 4}}}]}))
        .unwrap()
        .unwrap();
        assert_eq!(vertex["usage"], json!({"prompt_tokens": 7, "total_tokens": 7}));
        assert_eq!(vertex["data"][0]["embedding"], json!([0.5]));
        assert!(answer(&json!({"candidates": []})).is_none());
        assert!(matches!(answer(&json!({"embeddings": [{}]})), Some(Err(AnswerError::Malformed(_)))));
        assert!(matches!(answer(&json!({"predictions": [{}]})), Some(Err(AnswerError::Malformed(_)))));
    }
}

//! Typed JSON-RPC 2.0 envelopes: parse a frame into a request or notification, render results,
//! errors and notifications.

use serde::Serialize;
use serde_json::{json, Value};

/// A parsed client frame. `id` is `None` for notifications.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcRequest {
    /// The method name, e.g. `offerSdp`.
    pub method: String,
    /// The `params` member: an object or an array, JSON null when absent. Each method parses
    /// its own shape.
    pub params: Value,
    /// The request id to echo in the response: a string, a number or JSON null.
    pub id: Option<Value>,
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RpcError {
    /// One of the JSON-RPC 2.0 codes below, or [`RpcError::REFUSED`].
    pub code: i64,
    /// What went wrong, for a human reading the device's log.
    pub message: String,
}

impl RpcError {
    /// The frame is not JSON (JSON-RPC 2.0 §5.1).
    pub const PARSE: i64 = -32700;
    /// JSON, but not a request object: no `"jsonrpc": "2.0"`, a non-string method, a bad id.
    pub const INVALID_REQUEST: i64 = -32600;
    /// The method is not one this server implements.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// The method exists but its params do not have the expected shape.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The server failed to handle a valid request (e.g. the media plane stopped).
    pub const INTERNAL: i64 = -32603;
    /// Server-defined: the request was understood but refused (bad SDP, no pending offer...).
    pub const REFUSED: i64 = -32000;

    /// An error with this code and message.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }
}

impl RpcRequest {
    /// Parses one text frame. On failure, the error and the id to answer it with (JSON null
    /// when the id is unknown).
    pub fn parse(text: &str) -> Result<RpcRequest, (RpcError, Value)> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            (
                RpcError::new(RpcError::PARSE, format!("parse error: {e}")),
                Value::Null,
            )
        })?;
        let Value::Object(mut obj) = value else {
            return Err((
                RpcError::new(RpcError::INVALID_REQUEST, "a request must be a JSON object"),
                Value::Null,
            ));
        };
        let id = obj.remove("id");
        let id_for_error = id.clone().unwrap_or(Value::Null);
        if let Some(bad) = id
            .as_ref()
            .filter(|i| !(i.is_string() || i.is_number() || i.is_null()))
        {
            return Err((
                RpcError::new(
                    RpcError::INVALID_REQUEST,
                    format!("id must be a string or a number, not {bad}"),
                ),
                Value::Null,
            ));
        }
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err((
                RpcError::new(RpcError::INVALID_REQUEST, "\"jsonrpc\" must be \"2.0\""),
                id_for_error,
            ));
        }
        let method = match obj.remove("method") {
            Some(Value::String(m)) => m,
            _ => {
                return Err((
                    RpcError::new(RpcError::INVALID_REQUEST, "\"method\" must be a string"),
                    id_for_error,
                ))
            }
        };
        let params = obj.remove("params").unwrap_or(Value::Null);
        if !(params.is_object() || params.is_array() || params.is_null()) {
            return Err((
                RpcError::new(
                    RpcError::INVALID_PARAMS,
                    "\"params\" must be an object or an array",
                ),
                id_for_error,
            ));
        }
        Ok(RpcRequest { method, params, id })
    }
}

/// `{"jsonrpc":"2.0","result":…,"id":…}`.
pub fn result(id: &Value, result: impl Serialize) -> String {
    json!({"jsonrpc": "2.0", "result": result, "id": id}).to_string()
}

/// `{"jsonrpc":"2.0","error":{…},"id":…}`.
pub fn error(id: &Value, error: &RpcError) -> String {
    json!({"jsonrpc": "2.0", "error": error, "id": id}).to_string()
}

/// `{"jsonrpc":"2.0","method":…,"params":…}`: a server notification.
pub fn notification(method: &str, params: impl Serialize) -> String {
    json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_their_type() {
        let r =
            RpcRequest::parse(r#"{"jsonrpc":"2.0","method":"ping","params":{},"id":7}"#).unwrap();
        assert_eq!(r.id, Some(json!(7)));
        assert_eq!(
            result(&json!(7), json!({})),
            r#"{"id":7,"jsonrpc":"2.0","result":{}}"#
        );
        let r = RpcRequest::parse(r#"{"jsonrpc":"2.0","method":"ping","id":"a-b"}"#).unwrap();
        assert_eq!(r.id, Some(json!("a-b")));
    }

    #[test]
    fn notifications_have_no_id() {
        let r = RpcRequest::parse(r#"{"jsonrpc":"2.0","method":"leave"}"#).unwrap();
        assert_eq!(
            (r.method.as_str(), r.id, r.params),
            ("leave", None, Value::Null)
        );
    }

    #[test]
    fn garbage_is_a_precise_error() {
        for (text, code) in [
            ("nope", RpcError::PARSE),
            ("[]", RpcError::INVALID_REQUEST),
            (r#"{"method":"ping","id":1}"#, RpcError::INVALID_REQUEST),
            (r#"{"jsonrpc":"2.0","id":1}"#, RpcError::INVALID_REQUEST),
            (
                r#"{"jsonrpc":"2.0","method":5,"id":1}"#,
                RpcError::INVALID_REQUEST,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"x","params":3,"id":1}"#,
                RpcError::INVALID_PARAMS,
            ),
            (
                r#"{"jsonrpc":"2.0","method":"x","id":{}}"#,
                RpcError::INVALID_REQUEST,
            ),
        ] {
            let (e, _) = RpcRequest::parse(text).unwrap_err();
            assert_eq!(e.code, code, "{text}");
        }
    }
}

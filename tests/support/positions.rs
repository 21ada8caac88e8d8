//! Message positions as the tests read them: the position the server
//! writes (in publish answers and metadata frames), the recovery request
//! made from one, and metadata frames read off a client.
//!
//! Everything goes through `RawClient`; nothing here opens a socket.

use serde_json::Value;

use super::client::{RawClient, op};

/// A position as the server writes it: an epoch and an offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct At {
    pub epoch: String,
    pub offset: u64,
}

impl At {
    /// The `epoch` and `offset` fields of a JSON object.
    pub fn of(v: &Value) -> At {
        At {
            epoch: v["epoch"].as_str().expect("an epoch").to_owned(),
            offset: v["offset"].as_u64().expect("an offset"),
        }
    }

    /// The `recover=` query parameter that continues `channel` from here.
    pub fn query(&self, channel: &str) -> String {
        format!("recover={channel}:{}:{}", self.epoch, self.offset)
    }
}

/// Reads one text frame as JSON.
pub fn json(client: &mut RawClient) -> Value {
    let payload = client.expect_message(op::TEXT);
    serde_json::from_slice(&payload).expect("a JSON frame")
}

/// Reads a text message in the metadata format: its position and text.
pub fn message(client: &mut RawClient) -> (At, String) {
    let v = json(client);
    let text = v["text"]
        .as_str()
        .unwrap_or_else(|| panic!("not a message: {v}"));
    (At::of(&v), text.to_owned())
}

/// Publishes a text message; the position the answer gives, if any (a
/// channel nobody holds gives none).
pub fn publish_text(publisher: &mut RawClient, channel: &str, body: &str) -> Option<At> {
    let response = publisher.publish(channel, Some("text/plain"), body.as_bytes());
    assert_eq!(response.status, 200, "{}", response.body_text());
    let v: Value = serde_json::from_slice(&response.body).expect("a JSON answer");
    assert_eq!(v["channel"], channel);
    v.get("epoch").map(|_| At::of(&v))
}

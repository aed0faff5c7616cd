//! A scripted mock API server for reconcile tests (`tower_test`): each test lists the exact
//! calls it expects, in order, and what the "API server" answers. A missing call fails the
//! expectations; an extra call finds the mock closed (`Service(Closed)`) and fails the caller.

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

fn status_response(code: u16, reason: &str) -> Result<Response<Body>, http::Error> {
    Response::builder().status(code).body(Body::from(
        serde_json::to_vec(&json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": reason, "reason": reason, "code": code
        }))
        .unwrap(),
    ))
}

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// How the mock answers one expected call.
pub enum Answer {
    /// 200 with this body.
    Json(Value),
    /// 200 with the request body (what an apply or create returns, near enough).
    Echo,
    /// 404 NotFound.
    NotFound,
    /// 409 Conflict (a stale resourceVersion, or the object exists).
    Conflict,
    /// 200 with this object, its `status` replaced by the request's (a status patch).
    WithStatus(Value),
}

pub struct Call {
    pub method: Method,
    pub path: String,
    pub answer: Answer,
}

pub fn call(method: Method, path: &str, answer: Answer) -> Call {
    Call {
        method,
        path: path.to_owned(),
        answer,
    }
}

/// A request the mock received.
#[derive(Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

/// Answers `calls` in order, asserting method and path; returns what it saw.
pub fn serve(mut handle: Handle, calls: Vec<Call>) -> tokio::task::JoinHandle<Vec<Seen>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        for (i, expected) in calls.into_iter().enumerate() {
            let (request, send) = handle.next_request().await.unwrap_or_else(|| {
                panic!("call {i} never came: {} {}", expected.method, expected.path)
            });
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            let query = request.uri().query().unwrap_or_default().to_owned();
            let content_type = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            // A trailing `*` matches any rest (generated names, e.g. of Events).
            let path_matches = match expected.path.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => path == expected.path,
            };
            assert!(
                method == expected.method && path_matches,
                "call {i}: got {method} {path}, expected {} {}",
                expected.method,
                expected.path
            );
            let response = match expected.answer {
                Answer::Json(v) => Response::builder()
                    .status(200)
                    .body(Body::from(serde_json::to_vec(&v).unwrap())),
                Answer::Echo => Response::builder()
                    .status(200)
                    .body(Body::from(bytes.to_vec())),
                Answer::WithStatus(mut object) => {
                    object["status"] = body["status"].clone();
                    Response::builder()
                        .status(200)
                        .body(Body::from(serde_json::to_vec(&object).unwrap()))
                }
                Answer::NotFound => status_response(404, "NotFound"),
                Answer::Conflict => status_response(409, "Conflict"),
            };
            send.send_response(response.unwrap());
            seen.push(Seen {
                method,
                path,
                query,
                content_type,
                body,
            });
        }
        seen
    })
}

//! The demo "orders" API, in memory: what `make run` puts behind Envoy.
//!
//! `POST /orders` → 201 `{"id":N, ...body}`; `GET /orders` → 200 `{"data":[...]}`;
//! `GET /orders/{id}` → 200; `PUT /orders/{id}` (replace) and `PATCH /orders/{id}` (merge) → 200;
//! `DELETE /orders/{id}` → 204. Errors are JSON: `{"error":{"code":..., "message":...}}`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::server::Server;
use crate::util::lock;

type Order = Map<String, Value>;

#[derive(Default)]
struct Store {
    next_id: u64,
    orders: BTreeMap<u64, Order>,
}

type Shared = Arc<Mutex<Store>>;

/// The orders API as an axum router (state included).
pub fn router() -> Router {
    let store: Shared = Arc::default();
    Router::new()
        .route("/orders", get(list).post(create))
        .route(
            "/orders/{id}",
            get(read).put(replace).patch(update).delete(remove),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(store)
}

/// Serves the orders API on `127.0.0.1:port` (`0` for a free port).
pub async fn serve(port: u16) -> Result<Server> {
    Server::start(router(), port).await
}

/// Serves the orders API on `host:port`.
pub async fn serve_on(host: &str, port: u16) -> Result<Server> {
    Server::start_on(router(), host, port).await
}

async fn list(State(store): State<Shared>) -> Response {
    let orders: Vec<Value> = lock(&store)
        .orders
        .values()
        .cloned()
        .map(Value::Object)
        .collect();
    Json(json!({ "data": orders })).into_response()
}

async fn create(State(store): State<Shared>, body: Bytes) -> Response {
    let fields = match parse_object(&body) {
        Ok(fields) => fields,
        Err(e) => return e.into_response(),
    };
    let mut store = lock(&store);
    store.next_id += 1;
    let id = store.next_id;
    let order = with_id(id, fields);
    store.orders.insert(id, order.clone());
    (StatusCode::CREATED, Json(Value::Object(order))).into_response()
}

async fn read(State(store): State<Shared>, Path(id): Path<String>) -> Response {
    let Some(id) = parse_id(&id) else {
        return not_found(&id);
    };
    match lock(&store).orders.get(&id) {
        Some(order) => Json(Value::Object(order.clone())).into_response(),
        None => not_found(&id.to_string()),
    }
}

async fn replace(State(store): State<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    change(store, &id, &body, |_, fields| fields).await
}

async fn update(State(store): State<Shared>, Path(id): Path<String>, body: Bytes) -> Response {
    change(store, &id, &body, |mut old, fields| {
        old.extend(fields);
        old
    })
    .await
}

/// Shared by PUT and PATCH: `merge(old, new_fields)` gives the stored order (the id is kept).
async fn change(
    store: Shared,
    id: &str,
    body: &[u8],
    merge: impl FnOnce(Order, Order) -> Order,
) -> Response {
    let Some(num) = parse_id(id) else {
        return not_found(id);
    };
    let fields = match parse_object(body) {
        Ok(fields) => fields,
        Err(e) => return e.into_response(),
    };
    let mut store = lock(&store);
    let Some(old) = store.orders.remove(&num) else {
        return not_found(id);
    };
    let order = with_id(num, merge(old, fields));
    store.orders.insert(num, order.clone());
    Json(Value::Object(order)).into_response()
}

async fn remove(State(store): State<Shared>, Path(id): Path<String>) -> Response {
    let removed = parse_id(&id).and_then(|num| lock(&store).orders.remove(&num));
    match removed {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => not_found(&id),
    }
}

/// `{"id": id, ...fields}` with `id` first and not overridable by the client.
fn with_id(id: u64, mut fields: Order) -> Order {
    fields.remove("id");
    let mut order = Order::new();
    order.insert("id".into(), json!(id));
    order.extend(fields);
    order
}

fn parse_id(id: &str) -> Option<u64> {
    id.parse().ok()
}

/// The request body as a JSON object; an empty body is an empty object.
fn parse_object(body: &[u8]) -> Result<Order, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Order::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_body",
            message: "the body must be a JSON object".into(),
        }),
        Err(e) => Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_json",
            message: format!("the body is not JSON: {e}"),
        }),
    }
}

/// An error answer: `{"error": {"code", "message"}}` with `status`.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.status, self.code, &self.message)
    }
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("order {id} not found"),
    )
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message}});
    (status, Json(body)).into_response()
}

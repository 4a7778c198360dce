//! `GET /v1/rollouts[/NAME]` and `POST /v1/rollouts/NAME/COMMAND`.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::{ApiState, Body, authorized, error, json_response, unauthorized};
use crate::rollout::{Command, CommandError};

pub(super) fn list(state: &ApiState) -> Response<Body> {
    json_response(StatusCode::OK, &json!({"items": state.rollouts.list()}))
}

pub(super) fn status(state: &ApiState, name: &str) -> Response<Body> {
    match state.rollouts.status(name) {
        Some(status) => json_response(StatusCode::OK, &status),
        None => error(StatusCode::NOT_FOUND, format!("no Rollout named {name:?}")),
    }
}

pub(super) async fn command(state: &ApiState, req: Request<Incoming>, name: &str, command: &str) -> Response<Body> {
    if !authorized(state, &req) {
        return unauthorized();
    }
    let Some(parsed) = Command::parse(command) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown command {command:?}: expected start, pause, resume, promote or abort"),
        );
    };
    match state.rollouts.command(name, parsed).await {
        Ok(status) => json_response(StatusCode::OK, &status),
        Err(e @ CommandError::NotFound(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ CommandError::Conflict(_)) => error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ CommandError::Store(_)) => {
            tracing::error!(error = %e, "cannot store a rollout command");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

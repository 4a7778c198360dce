//! `GET /v1/rollouts[/NAME]` and `POST /v1/rollouts/NAME/COMMAND`. In Kubernetes mode a
//! rollout is named `NAMESPACE/NAME` (`/v1/rollouts/shop/reviews/pause`); any replica answers,
//! and a command is written to the Rollout object for the leader to carry out.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{ApiState, Body, authorized, error, json_response, unauthorized};
use crate::kubernetes::rollouts::ClusterRollouts;
use crate::rollout::{Command, CommandError, Controller};

/// The rollouts the API serves: run here (files and the API), or by the cluster's leader.
#[derive(Clone, Debug)]
pub enum Rollouts {
    Local(Arc<Controller>),
    Cluster(Arc<ClusterRollouts>),
}

impl Rollouts {
    /// Every rollout's status; with `service`, only those of that service (the others'
    /// numbers are not computed).
    pub fn list(&self, service: Option<&str>) -> Vec<Value> {
        match self {
            Rollouts::Local(c) => c.list(service),
            Rollouts::Cluster(c) => c.list(service),
        }
    }

    /// The status of one rollout.
    pub fn status(&self, name: &str) -> Result<Value, CommandError> {
        match self {
            Rollouts::Local(c) => c.status(name).ok_or_else(|| CommandError::NotFound(name.to_owned())),
            Rollouts::Cluster(c) => c.status(name),
        }
    }

    /// Carry out a command: the status after it, and whether it has been carried out (in
    /// Kubernetes mode the leader may not have acted on it yet).
    pub async fn command(&self, name: &str, command: Command) -> Result<(Value, bool), CommandError> {
        match self {
            Rollouts::Local(c) => c.command(name, command).await.map(|v| (v, true)),
            Rollouts::Cluster(c) => c.command(name, command).await,
        }
    }
}

pub(super) fn list(state: &ApiState, service: Option<&str>) -> Response<Body> {
    json_response(StatusCode::OK, &json!({"items": state.rollouts.list(service)}))
}

/// A name from the path: `NAMESPACE%2FNAME` (the dashboard encodes the slash) is `NAMESPACE/NAME`.
fn decoded(name: &str) -> String {
    name.replace("%2F", "/").replace("%2f", "/")
}

pub(super) fn status(state: &ApiState, name: &str) -> Response<Body> {
    match state.rollouts.status(&decoded(name)) {
        Ok(status) => json_response(StatusCode::OK, &status),
        Err(e @ (CommandError::NotFound(_) | CommandError::NotAccepted(_))) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
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
    match state.rollouts.command(&decoded(name), parsed).await {
        Ok((status, true)) => json_response(StatusCode::OK, &status),
        // Written to the object; the leader has not been seen acting on it yet.
        Ok((status, false)) => json_response(StatusCode::ACCEPTED, &status),
        Err(e @ CommandError::NotFound(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ (CommandError::Conflict(_) | CommandError::NotAccepted(_))) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Err(e @ CommandError::Store(_)) => {
            tracing::error!(error = %e, "cannot store a rollout command");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

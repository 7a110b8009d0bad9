//! `/api/v2/workspaces...`: create (returns each agent's token once), list, delete.

use super::audit::{self, Source};
use super::auth::CurrentUser;
use super::json::Json;
use super::AppState;
use crate::error::{ApiError, ApiResult};
use crate::store::UserRow;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use meridian_regions::api::{App, CreateWorkspace, CreateWorkspaceResponse, WorkspaceList};
use meridian_regions::name::Name;
use std::collections::HashSet;

/// Most agents one workspace may declare, and most apps one agent may.
const MAX_AGENTS: usize = 16;
const MAX_APPS: usize = 64;

pub async fn create(
    State(state): State<AppState>,
    CurrentUser(caller): CurrentUser,
    source: Source,
    Json(req): Json<CreateWorkspace>,
) -> ApiResult<(StatusCode, axum::Json<CreateWorkspaceResponse>)> {
    validate(&req)?;
    let owner = owner_for(&state, &caller, req.owner.as_deref()).await?;
    let agents: Vec<&str> = req.agents.iter().map(|a| a.name.as_str()).collect();
    let target = format!("{}/{}", owner.username, req.name);
    let created = audit::change(Some(&caller), "workspace.create", "workspace", target, &source)
        .with_changes(serde_json::json!({"agents": [null, agents]}));
    let (id, agent_tokens) = state.store.create_workspace(owner.id, &req.name, &req.agents, &created).await?;
    tracing::info!(workspace = %req.name, owner = %owner.username, by = %caller.username, "workspace created");
    let workspace = state
        .store
        .workspace(id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("created workspace vanished")))?;
    Ok((StatusCode::CREATED, axum::Json(CreateWorkspaceResponse { workspace, agent_tokens })))
}

#[derive(serde::Deserialize)]
pub struct ListQuery {
    /// Admins may list another user's workspaces, or `all`.
    owner: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    CurrentUser(caller): CurrentUser,
    Query(q): Query<ListQuery>,
) -> ApiResult<axum::Json<WorkspaceList>> {
    let owner = match q.owner.as_deref() {
        Some("all") if caller.admin => None,
        Some("all") => return Err(ApiError::Forbidden("Only admins may list everyone's workspaces.".into())),
        other => Some(owner_for(&state, &caller, other).await?.id),
    };
    Ok(axum::Json(WorkspaceList { workspaces: state.store.workspaces(owner).await? }))
}

pub async fn delete(
    State(state): State<AppState>,
    CurrentUser(caller): CurrentUser,
    source: Source,
    Path((owner, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let owner = owner_for(&state, &caller, Some(&owner)).await?;
    let target = format!("{}/{name}", owner.username);
    let deleted = audit::change(Some(&caller), "workspace.delete", "workspace", target, &source);
    state.store.delete_workspace(owner.id, &name, &deleted).await?;
    tracing::info!(workspace = %name, owner = %owner.username, by = %caller.username, "workspace deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The owner a request acts for: the caller, or (admins only) a named user.
async fn owner_for(state: &AppState, caller: &UserRow, owner: Option<&str>) -> ApiResult<UserRow> {
    match owner {
        None => Ok(caller.clone()),
        Some(name) if name == caller.username => Ok(caller.clone()),
        Some(_) if !caller.admin => {
            Err(ApiError::Forbidden("Only admins may act on another user's workspaces.".into()))
        }
        Some(name) => {
            state.store.user_by_name(name).await?.ok_or_else(|| ApiError::NotFound(format!("No user named {name:?}.")))
        }
    }
}

fn validate(req: &CreateWorkspace) -> ApiResult<()> {
    let bad = |m: String| Err(ApiError::BadRequest(m));
    Name::parse(&req.name).map_err(|e| ApiError::BadRequest(format!("Invalid workspace name: {e}.")))?;
    if req.agents.is_empty() || req.agents.len() > MAX_AGENTS {
        return bad(format!("A workspace needs 1 to {MAX_AGENTS} agents."));
    }
    let mut agent_names = HashSet::new();
    for agent in &req.agents {
        Name::parse(&agent.name)
            .map_err(|e| ApiError::BadRequest(format!("Invalid agent name {:?}: {e}.", agent.name)))?;
        if !agent_names.insert(&agent.name) {
            return bad(format!("Agent {:?} is declared twice.", agent.name));
        }
        if agent.apps.len() > MAX_APPS {
            return bad(format!("An agent may declare at most {MAX_APPS} apps."));
        }
        let mut slugs = HashSet::new();
        for app in &agent.apps {
            validate_app(app)?;
            if !slugs.insert(&app.slug) {
                return bad(format!("App {:?} is declared twice on agent {:?}.", app.slug, agent.name));
            }
        }
    }
    Ok(())
}

/// An app slug is a name that cannot be read as a port; its target is a port
/// or an http(s) URL on the workspace's loopback.
fn validate_app(app: &App) -> ApiResult<()> {
    let bad = |m: String| Err(ApiError::BadRequest(m));
    Name::parse(&app.slug).map_err(|e| ApiError::BadRequest(format!("Invalid app slug {:?}: {e}.", app.slug)))?;
    match (&app.port, &app.url) {
        (Some(0), None) => bad(format!("App {:?}: port must be from 1 to 65535.", app.slug)),
        (Some(_), None) => Ok(()),
        (None, Some(url)) => {
            let u = url::Url::parse(url)
                .map_err(|e| ApiError::BadRequest(format!("App {:?}: invalid url: {e}.", app.slug)))?;
            let loopback = match u.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if !matches!(u.scheme(), "http" | "https") || !loopback || u.port_or_known_default().is_none() {
                return bad(format!(
                    "App {:?}: url must be http(s) on the workspace's loopback (127.0.0.1, [::1] or localhost).",
                    app.slug
                ));
            }
            Ok(())
        }
        _ => bad(format!("App {:?} needs exactly one of port and url.", app.slug)),
    }
}

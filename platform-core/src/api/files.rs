//! REST handlers for binary uploads (BCX): an endpoint's files, listed and downloaded.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{endpoint_app_version, rfc3339, storage, Api, ApiError};
use crate::ext::bcx;

/// `GET /api/v1/endpoints/{id}/binary-data`: the endpoint's files, by name.
pub(super) async fn list_files(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    endpoint_app_version(&api, &id).await?;
    let files = api
        .store
        .call(move |c| bcx::files(c, &id))
        .await
        .map_err(storage)?;
    Ok(Json(Value::Array(
        files
            .into_iter()
            .map(|f| json!({"name": f.name, "size": f.size, "uploadedAt": rfc3339(f.uploaded_ms)}))
            .collect(),
    )))
}

/// `GET /api/v1/endpoints/{id}/binary-data/{name}`: the file's bytes.
pub(super) async fn download_file(
    State(api): State<Api>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    endpoint_app_version(&api, &id).await?;
    let not_found = || ApiError::not_found(format!("no file {name:?} for this endpoint"));
    let (ep, n) = (id.clone(), name.clone());
    let listed = api
        .store
        .call(move |c| Ok(bcx::files(c, &ep)?.into_iter().any(|f| f.name == n)))
        .await
        .map_err(storage)?;
    if !listed {
        return Err(not_found());
    }
    let path = bcx::file_path(&api.extensions.bcx, &id, &name);
    let read = path.clone();
    let bytes = tokio::task::spawn_blocking(move || std::fs::read(read))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(|e| {
            log::error!("bcx: cannot read {}: {e}", path.display());
            not_found()
        })?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

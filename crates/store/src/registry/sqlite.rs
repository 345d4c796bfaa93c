//! The registry in SQLite.

use sqlx::SqliteConnection;

use super::{
    AUDIT_COLUMNS, AuditEvent, COLUMNS, Change, ModelVersionRow, Registered, RegistryError, RegistryStore, Stage,
};
use crate::SqliteStore;

async fn audit(conn: &mut SqliteConnection, e: &AuditEvent) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"))
        .bind(e.id)
        .bind(e.time)
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.subject)
        .bind(&e.from_state)
        .bind(&e.to_state)
        .bind(&e.reason)
        .execute(conn)
        .await
        .map(drop)
}

impl RegistryStore for SqliteStore {
    async fn register_version(&self, row: &ModelVersionRow, reason: &str) -> Result<Registered, RegistryError> {
        let mut tx = self.pool().begin().await?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO model_versions ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (model_name, version) DO NOTHING"
        ))
        .bind(&row.model_name)
        .bind(&row.version)
        .bind(&row.artifact_sha256)
        .bind(&row.artifact_uri)
        .bind(&row.training_data)
        .bind(&row.metrics)
        .bind(&row.stage)
        .bind(&row.registered_by)
        .bind(row.registered_at)
        .bind(row.stage_changed_at)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 1 {
            let change = Change { actor: &row.registered_by, reason, at: row.registered_at };
            audit(&mut tx, &change.event("register", &row.model_name, &row.version, "", &row.stage)).await?;
            tx.commit().await?;
            return Ok(Registered::New);
        }
        drop(tx);
        let existing = self.model_version(&row.model_name, &row.version).await?.map(|r| r.artifact_sha256);
        match existing {
            Some(digest) if digest == row.artifact_sha256 => Ok(Registered::Already),
            existing => Err(RegistryError::Conflict {
                model: row.model_name.clone(),
                version: row.version.clone(),
                existing: existing.unwrap_or_default(),
            }),
        }
    }

    async fn model_versions(&self, model_name: Option<&str>) -> Result<Vec<ModelVersionRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM model_versions WHERE (?1 IS NULL OR model_name = ?1) \
             ORDER BY model_name, registered_at, version"
        ))
        .bind(model_name)
        .fetch_all(self.pool())
        .await
    }

    async fn model_version(&self, model_name: &str, version: &str) -> Result<Option<ModelVersionRow>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM model_versions WHERE model_name = ?1 AND version = ?2"))
            .bind(model_name)
            .bind(version)
            .fetch_optional(self.pool())
            .await
    }

    async fn set_stage(
        &self,
        model_name: &str,
        version: &str,
        stage: Stage,
        change: &Change<'_>,
    ) -> Result<Vec<String>, RegistryError> {
        let mut tx = self.pool().begin().await?;
        let from: Option<String> =
            sqlx::query_scalar("SELECT stage FROM model_versions WHERE model_name = ?1 AND version = ?2")
                .bind(model_name)
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(from) = from else {
            return Err(RegistryError::NotFound { model: model_name.into(), version: version.into() });
        };
        let archived: Vec<String> = if stage == Stage::Production {
            sqlx::query_scalar(
                "UPDATE model_versions SET stage = 'archived', stage_changed_at = ?3 \
                 WHERE model_name = ?1 AND stage = 'production' AND version <> ?2 RETURNING version",
            )
            .bind(model_name)
            .bind(version)
            .bind(change.at)
            .fetch_all(&mut *tx)
            .await?
        } else {
            Vec::new()
        };
        for old in &archived {
            audit(&mut tx, &change.event("archive", model_name, old, "production", "archived")).await?;
        }
        sqlx::query(
            "UPDATE model_versions SET stage = ?3, stage_changed_at = ?4 WHERE model_name = ?1 AND version = ?2",
        )
        .bind(model_name)
        .bind(version)
        .bind(stage.as_str())
        .bind(change.at)
        .execute(&mut *tx)
        .await?;
        audit(&mut tx, &change.event("promote", model_name, version, &from, stage.as_str())).await?;
        tx.commit().await?;
        Ok(archived)
    }

    async fn audit_events(&self, limit: i64) -> Result<Vec<AuditEvent>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {AUDIT_COLUMNS} FROM audit_events ORDER BY id DESC LIMIT ?1"))
            .bind(limit)
            .fetch_all(self.pool())
            .await
    }
}

//! The registry in SQLite.

use chrono::{DateTime, Utc};

use super::{COLUMNS, ModelVersionRow, Registered, RegistryError, RegistryStore, Stage};
use crate::SqliteStore;

impl RegistryStore for SqliteStore {
    async fn register_version(&self, row: &ModelVersionRow) -> Result<Registered, RegistryError> {
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
        .execute(self.pool())
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Registered::New);
        }
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
        at: DateTime<Utc>,
    ) -> Result<Vec<String>, RegistryError> {
        let mut tx = self.pool().begin().await?;
        let archived: Vec<String> = if stage == Stage::Production {
            sqlx::query_scalar(
                "UPDATE model_versions SET stage = 'archived', stage_changed_at = ?3 \
                 WHERE model_name = ?1 AND stage = 'production' AND version <> ?2 RETURNING version",
            )
            .bind(model_name)
            .bind(version)
            .bind(at)
            .fetch_all(&mut *tx)
            .await?
        } else {
            Vec::new()
        };
        let moved = sqlx::query(
            "UPDATE model_versions SET stage = ?3, stage_changed_at = ?4 WHERE model_name = ?1 AND version = ?2",
        )
        .bind(model_name)
        .bind(version)
        .bind(stage.as_str())
        .bind(at)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            return Err(RegistryError::NotFound { model: model_name.into(), version: version.into() });
        }
        tx.commit().await?;
        Ok(archived)
    }
}

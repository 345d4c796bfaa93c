//! The registry and deployments on both stores: one copy of each statement, in the `$N`
//! placeholders Postgres and SQLite both take, generated for each backend. Postgres also locks the
//! rows a change reads (`FOR UPDATE`); SQLite serialises its writers anyway.

use super::deployments::{COLUMNS as DEPLOYMENT_COLUMNS, DeploymentRow, DeploymentStore, NextDeployment};
use super::rollouts::{COLUMNS as ROLLOUT_COLUMNS, RolloutRow, RolloutStore};
use super::{
    AUDIT_COLUMNS, AuditEvent, COLUMNS, Change, ModelVersionRow, Registered, RegistryError, RegistryStore, Stage,
};

/// Implements [`RegistryStore`], [`DeploymentStore`] and [`RolloutStore`] for `$store`, whose connections are
/// `$conn`; `$lock` ends the statements that read rows a change then writes; `$now` reads the
/// database's clock.
macro_rules! registry_backend {
    ($backend:ident, $store:ty, $conn:ty, $lock:literal, $now:literal) => {
        pub(crate) mod $backend {
            use super::*;

        /// Writes one audit event in the caller's transaction.
        pub(crate) async fn audit(conn: &mut $conn, e: &AuditEvent) -> Result<(), sqlx::Error> {
            sqlx::query(&format!("INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"))
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

        impl RegistryStore for $store {
            async fn register_version(&self, row: &ModelVersionRow, reason: &str) -> Result<Registered, RegistryError> {
                let mut tx = self.write_transaction().await?;
                let inserted = sqlx::query(&format!(
                    "INSERT INTO model_versions ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
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
                    "SELECT {COLUMNS} FROM model_versions WHERE (CAST($1 AS TEXT) IS NULL OR model_name = $1) \
                     ORDER BY model_name, registered_at, version"
                ))
                .bind(model_name)
                .fetch_all(self.pool())
                .await
            }

            async fn model_version(&self, model_name: &str, version: &str) -> Result<Option<ModelVersionRow>, sqlx::Error> {
                sqlx::query_as(&format!("SELECT {COLUMNS} FROM model_versions WHERE model_name = $1 AND version = $2"))
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
                let mut tx = self.write_transaction().await?;
                let from: Option<String> =
                    sqlx::query_scalar(&format!(
                        "SELECT stage FROM model_versions WHERE model_name = $1 AND version = $2{}",
                        $lock
                    ))
                        .bind(model_name)
                        .bind(version)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some(from) = from else {
                    return Err(RegistryError::NotFound { model: model_name.into(), version: version.into() });
                };
                let archived: Vec<String> = if stage == Stage::Production {
                    sqlx::query_scalar(
                        "UPDATE model_versions SET stage = 'archived', stage_changed_at = $3 \
                         WHERE model_name = $1 AND stage = 'production' AND version <> $2 RETURNING version",
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
                    "UPDATE model_versions SET stage = $3, stage_changed_at = $4 WHERE model_name = $1 AND version = $2",
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
                sqlx::query_as(&format!("SELECT {AUDIT_COLUMNS} FROM audit_events ORDER BY id DESC LIMIT $1"))
                    .bind(limit)
                    .fetch_all(self.pool())
                    .await
            }
        }

        impl DeploymentStore for $store {
            async fn deployments(&self) -> Result<Vec<DeploymentRow>, sqlx::Error> {
                sqlx::query_as(&format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments ORDER BY model_name"))
                    .fetch_all(self.pool())
                    .await
            }

            async fn set_deployment(&self, row: &DeploymentRow, change: &Change<'_>) -> Result<(), RegistryError> {
                let mut tx = self.write_transaction().await?;
                write_deployment(&mut tx, row, None, change).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn replace_deployment(&self, next: NextDeployment<'_>, change: &Change<'_>) -> Result<(), RegistryError> {
                let mut tx = self.write_transaction().await?;
                write_deployment(&mut tx, next.row, Some(next.replaces), change).await?;
                tx.commit().await?;
                Ok(())
            }
        }

        /// Replaces a model's deployment inside the caller's transaction, with its audit event;
        /// with `replaces`, only while the stored deployment's id is the one given (None: while
        /// the model has none).
        async fn write_deployment(
            conn: &mut $conn,
            row: &DeploymentRow,
            replaces: Option<Option<&str>>,
            change: &Change<'_>,
        ) -> Result<(), RegistryError> {
            row.validate().map_err(RegistryError::Invalid)?;
            for version in std::iter::once(&row.primary_version).chain(row.candidate_version.as_ref()) {
                let known: Option<String> =
                    sqlx::query_scalar("SELECT version FROM model_versions WHERE model_name = $1 AND version = $2")
                        .bind(&row.model_name)
                        .bind(version)
                        .fetch_optional(&mut *conn)
                        .await?;
                if known.is_none() {
                    return Err(RegistryError::NotFound { model: row.model_name.clone(), version: version.clone() });
                }
            }
            let before: Option<DeploymentRow> =
                sqlx::query_as(&format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE model_name = $1{}", $lock))
                    .bind(&row.model_name)
                    .fetch_optional(&mut *conn)
                    .await?;
            let changed = |now: Option<&DeploymentRow>| RegistryError::Changed {
                model: row.model_name.clone(),
                now: now.map_or_else(|| "another deployment".into(), DeploymentRow::describe),
            };
            if let Some(replaces) = replaces
                && before.as_ref().map(|b| b.deployment_id.as_str()) != replaces
            {
                return Err(changed(before.as_ref()));
            }
            // The update repeats the comparison: a first deployment written by another
            // transaction since the read above (no row to lock then) is not overwritten.
            let written = sqlx::query(&format!(
                "INSERT INTO deployments ({DEPLOYMENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (model_name) DO UPDATE SET deployment_id = $2, primary_version = $3, \
                 candidate_version = $4, mode = $5, share = $6, updated_by = $7, updated_at = $8, \
                 policy = $9, accept_below = $10, reject_at = $11 \
                 WHERE $12 OR deployments.deployment_id = $13"
            ))
            .bind(&row.model_name)
            .bind(&row.deployment_id)
            .bind(&row.primary_version)
            .bind(&row.candidate_version)
            .bind(&row.mode)
            .bind(row.share)
            .bind(&row.updated_by)
            .bind(row.updated_at)
            .bind(&row.policy)
            .bind(row.accept_below)
            .bind(row.reject_at)
            .bind(replaces.is_none())
            .bind(replaces.flatten())
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if written == 0 {
                return Err(changed(None));
            }
            let from = before.map(|b| b.describe()).unwrap_or_default();
            let mut event = change.event("deploy", &row.model_name, "", &from, &row.describe());
            event.subject = format!("{} ({})", row.model_name, row.deployment_id);
            audit(conn, &event).await?;
            Ok(())
        }

        impl RolloutStore for $store {
            async fn clock(&self) -> Result<chrono::DateTime<chrono::Utc>, sqlx::Error> {
                sqlx::query_scalar($now).fetch_one(self.pool()).await
            }

            async fn rollouts(&self, model: Option<&str>) -> Result<Vec<RolloutRow>, sqlx::Error> {
                sqlx::query_as(&format!(
                    "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE CAST($1 AS TEXT) IS NULL OR model_name = $1 \
                     ORDER BY rollout_id DESC"
                ))
                .bind(model)
                .fetch_all(self.pool())
                .await
            }

            async fn start_rollout(
                &self,
                row: &RolloutRow,
                deployment: NextDeployment<'_>,
                change: &Change<'_>,
            ) -> Result<(), RegistryError> {
                let steps = row.steps().map_err(RegistryError::Invalid)?;
                crate::registry::rollouts::validate_plan(&steps).map_err(RegistryError::Invalid)?;
                let mut tx = self.write_transaction().await?;
                let active: Option<String> = sqlx::query_scalar(&format!(
                    "SELECT rollout_id FROM rollouts WHERE model_name = $1 AND state IN ('running', 'paused'){}",
                    $lock
                ))
                .bind(&row.model_name)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(active) = active {
                    return Err(RegistryError::Invalid(format!(
                        "{} already has an active rollout ({active}): abort it first",
                        row.model_name
                    )));
                }
                sqlx::query(&format!(
                    "INSERT INTO rollouts ({ROLLOUT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                ))
                .bind(&row.rollout_id)
                .bind(&row.model_name)
                .bind(&row.primary_version)
                .bind(&row.candidate_version)
                .bind(&row.plan)
                .bind(row.step)
                .bind(&row.state)
                .bind(row.step_started_at)
                .bind(&row.created_by)
                .bind(row.updated_at)
                .bind(&row.history)
                .execute(&mut *tx)
                .await?;
                write_deployment(&mut tx, deployment.row, Some(deployment.replaces), change).await?;
                let subject = format!("{}/{}", row.model_name, row.candidate_version);
                let mut event = change.event("rollout", &row.model_name, &row.candidate_version, "", &describe(row));
                event.subject = subject;
                audit(&mut tx, &event).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn advance_rollout(
                &self,
                expected: &RolloutRow,
                next: &RolloutRow,
                deployment: Option<NextDeployment<'_>>,
                change: &Change<'_>,
            ) -> Result<bool, RegistryError> {
                let mut tx = self.write_transaction().await?;
                let moved = sqlx::query(
                    "UPDATE rollouts SET step = $1, state = $2, step_started_at = $3, updated_at = $4, history = $5 \
                     WHERE rollout_id = $6 AND step = $7 AND state = $8 AND history = $9",
                )
                .bind(next.step)
                .bind(&next.state)
                .bind(next.step_started_at)
                .bind(next.updated_at)
                .bind(&next.history)
                .bind(&expected.rollout_id)
                .bind(expected.step)
                .bind(&expected.state)
                // Every action adds to the history: a pause and a resume in between leave step
                // and state as they were, but not the history.
                .bind(&expected.history)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if moved == 0 {
                    return Ok(false);
                }
                if let Some(deployment) = deployment {
                    // Changed meanwhile: the rollout is judged again from what is stored now.
                    match write_deployment(&mut tx, deployment.row, Some(deployment.replaces), change).await {
                        Err(RegistryError::Changed { .. }) => return Ok(false),
                        written => written?,
                    }
                }
                let event =
                    change.event("rollout", &next.model_name, &next.candidate_version, &describe(expected), &describe(next));
                audit(&mut tx, &event).await?;
                tx.commit().await?;
                Ok(true)
            }
        }

        /// `step 2 of 4 (25%), running`.
        fn describe(r: &RolloutRow) -> String {
            let steps = r.steps().unwrap_or_default();
            let share = steps.get(r.step as usize).map_or(0.0, |s| s.share);
            format!("step {} of {} ({}%), {}", r.step + 1, steps.len(), (share * 1000.0).round() / 10.0, r.state)
        }
        }
    };
}

registry_backend!(postgres, crate::PgStore, sqlx::PgConnection, " FOR UPDATE", "SELECT now()");
registry_backend!(
    sqlite,
    crate::SqliteStore,
    sqlx::SqliteConnection,
    "",
    "SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
);

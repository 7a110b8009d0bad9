//! Signing keys.

use super::Store;
use crate::error::ApiResult;

impl Store {
    /// Every signing key as (id, public key, sealed private key), newest first.
    pub async fn signing_keys(&self) -> ApiResult<Vec<(String, Vec<u8>, Vec<u8>)>> {
        Ok(sqlx::query_as("SELECT id, public_key, sealed_private_key FROM signing_keys ORDER BY created_at DESC")
            .fetch_all(&self.pool)
            .await?)
    }

    /// Inserts a signing key unless one exists; an advisory lock makes
    /// concurrent first starts of several replicas create exactly one.
    pub async fn insert_first_signing_key(&self, id: &str, public: &[u8], sealed: &[u8]) -> ApiResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(7081)").execute(&mut *tx).await?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM signing_keys)").fetch_one(&mut *tx).await?;
        if !exists {
            sqlx::query("INSERT INTO signing_keys (id, public_key, sealed_private_key) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(public)
                .bind(sealed)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

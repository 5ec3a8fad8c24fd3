//! Password hashes of local users: argon2id, slow on purpose, in PHC string form.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// A salted, slow hash of a password (argon2id), in PHC string form.
pub fn hash_password(password: &str, salt_bits: u128) -> Result<String, String> {
    let salt = SaltString::encode_b64(&salt_bits.to_le_bytes()).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash of a random string, used only to spend verification time on unknown users.
pub const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0wPzWXqF5YWx9V9mW8bC6b6Rk0q9VyJm3Vb+O7r8m2I";

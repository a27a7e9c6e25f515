//! Control's errors: the store's answers, plus rules checked here.

use crate::domain::SessionId;
use crate::store::StoreError;
use crate::token::TokenError;

/// Errors of the control layer: the store's answers, plus rules checked here.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("participant is not a member of session {0}")]
    NotAMember(SessionId),
}

/// Why a device token was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeviceTokenError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Store(StoreError),
}

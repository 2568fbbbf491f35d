//! How the node's errors answer a client: each [`NodeError`] becomes the [`ApiError`]
//! with its status and `code`.

use crate::error::ApiError;
use crate::raft::NodeError;

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let message = e.to_string();
        match e {
            NodeError::NoLeader { leader } => ApiError::NoLeader { message, leader },
            NodeError::LeaderUnreachable { leader } => ApiError::NoLeader {
                message,
                leader: Some(leader),
            },
            NodeError::NoQuorum(_) => ApiError::NoLeader {
                message,
                leader: None,
            },
            NodeError::InvalidMembership(_) => ApiError::InvalidMembership(message),
            NodeError::OutcomeUnknown(_) => ApiError::OutcomeUnknown(message),
            NodeError::Timeout(_) => ApiError::Timeout(message),
            NodeError::Overloaded(_) => ApiError::Overloaded(message),
            NodeError::Unavailable(_) => ApiError::Unavailable(message),
            NodeError::StorageUnavailable(_) => ApiError::StorageUnavailable(message),
            NodeError::NoSpace(_) => ApiError::NoSpace(message),
            NodeError::Storage(_) => ApiError::Internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::reveals_internals;

    #[test]
    fn bodies_never_show_rust_internals() {
        // What a full disk made openraft report, and what a client once read.
        let fatal = "when Write Log(LogId { leader_id: LeaderId { term: 1, node_id: 1 }, \
                     index: 140 }): std::io::error::Error: No space left on device (os error 28)";
        let errors = [
            ApiError::from(NodeError::Unavailable(fatal.into())),
            ApiError::from(NodeError::Storage(fatal.into())),
            ApiError::from(NodeError::OutcomeUnknown(
                format!("discarded: {:?}", Some(std::io::Error::other("x"))).into(),
            )),
            ApiError::Internal(format!("{:?}", std::io::Error::other("boom"))),
        ];
        for e in errors {
            let body = e.body();
            assert!(!reveals_internals(&body.error), "{body:?}");
            assert!(!body.error.is_empty());
            assert_eq!(body.code, e.code());
        }
        // Sentences of kvstore's own pass unchanged.
        let body = ApiError::from(NodeError::NoLeader { leader: Some(2) }).body();
        assert_eq!(
            body.error,
            "no leader is available to serve this request (last known leader: node 2)"
        );
    }
}

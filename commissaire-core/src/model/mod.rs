pub use crate::jsonrpc::RpcError;

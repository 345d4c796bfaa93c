//! The gRPC codec of every generated service: prost's, with each received message's decoded
//! size bounded (see [`crate::footprint`]) and covered by the server's memory budget before
//! prost decodes it.

use crate::footprint::MessageShape;
use bytes::Buf;
use prost::{Message, Name};
use std::sync::Arc;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// What covers the memory a call's received messages take once decoded.
pub trait DecodeBudget: Send + Sync {
    /// Covers a message of `wire_bytes` whose decoding allocates up to `decoded_bytes`, or
    /// refuses it (the status ends the call) before it is decoded.
    fn cover(&self, wire_bytes: usize, decoded_bytes: usize) -> Result<(), Status>;
}

tokio::task_local! {
    static DECODE_BUDGET: Arc<dyn DecodeBudget>;
}

/// Runs `call` (a server's handling of one call) with `budget` covering the messages its
/// decoders receive: a decoder made while `call` runs keeps it, wherever it is polled later.
pub async fn with_decode_budget<F: Future>(budget: Arc<dyn DecodeBudget>, call: F) -> F::Output {
    DECODE_BUDGET.scope(budget, call).await
}

/// prost's codec, whose decoders ask the call's [`DecodeBudget`] (where a server set one with
/// [`with_decode_budget`]) to cover each message before decoding it.
#[derive(Debug, Clone)]
pub struct BoundedCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Name + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        let budget = DECODE_BUDGET.try_with(Arc::clone).ok();
        let shape = budget.as_ref().and_then(|_| crate::footprint::contracts().message(&U::full_name()));
        BoundedDecoder { inner: self.0.decoder(), budget, shape }
    }
}

/// The decoder of [`BoundedCodec`].
pub struct BoundedDecoder<U> {
    inner: ProstDecoder<U>,
    budget: Option<Arc<dyn DecodeBudget>>,
    /// `U` in the contracts' schema, looked up once per call (with a budget only).
    shape: Option<MessageShape>,
}

impl<U: Message + Default + Name> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if let Some(budget) = &self.budget {
            // The whole message is in one contiguous buffer.
            let wire = buf.chunk();
            if wire.len() != buf.remaining() {
                return Err(Status::internal("a received message is not in one buffer"));
            }
            let Some(shape) = self.shape else {
                return Err(Status::internal(format!("no schema to bound a decoded {}", U::full_name())));
            };
            let decoded = crate::footprint::contracts().bound_of(shape, wire).map_err(|why| {
                Status::invalid_argument(format!("the message is not a valid {}: {why}", U::full_name()))
            })?;
            budget.cover(buf.remaining(), decoded)?;
        }
        self.inner.decode(buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}

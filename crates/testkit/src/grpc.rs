//! Calls any gRPC method with an empty message (valid for every protobuf request type), to
//! check what a server answers before the method's own logic: authorisation, admission.

use std::time::Duration;

use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;

/// Calls `path` with one empty message (streaming methods get a stream of one) on `channel`;
/// Ok when the call got through to the method (whatever it then answered in the stream),
/// else the status. Gives up after 10 s.
pub async fn call_empty<T>(channel: T, path: &str, streaming: bool) -> Result<(), tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut grpc = Grpc::new(channel);
    let path = PathAndQuery::try_from(path.to_string()).expect("a method path");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let call = async move {
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.into().to_string()))?;
        if streaming {
            let request = tonic::Request::new(futures::stream::iter([()]));
            grpc.streaming(request, path, codec).await.map(|_| ())
        } else {
            grpc.unary(tonic::Request::new(()), path, codec).await.map(|_| ())
        }
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer within 10 s")))
}

//! Streams are admitted for their whole life: they hold a concurrency permit until they end,
//! their deadline covers every message, and an idle stream is closed.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use vigil_proto::vigil::v1::InspectRequest;

fn image() -> Vec<u8> {
    samples("normal").remove(0).1
}

/// Opens an InspectStream fed by the returned sender, and waits for the first answer.
async fn open_stream(
    server: &vigil_edge::RunningServer,
) -> (tokio::sync::mpsc::Sender<InspectRequest>, tonic::Streaming<vigil_proto::vigil::v1::InspectStreamResponse>) {
    let (mut inspect, _) = clients(server).await;
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    sender.send(InspectRequest { image: image(), ..Default::default() }).await.unwrap();
    let mut responses = inspect.inspect_stream(ReceiverStream::new(receiver)).await.unwrap().into_inner();
    let first = responses.next().await.unwrap().unwrap();
    assert!(first.result.is_some(), "{first:?}");
    (sender, responses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_open_past_its_deadline_ends_with_deadline_exceeded() {
    let mut config = config();
    config.limits.stream_timeout_ms = 400;
    let server = start(config).await;
    let (sender, mut responses) = open_stream(&server).await;
    // The stream stays open (the sender is alive) and quiet: the deadline ends it.
    let end = tokio::time::timeout(Duration::from_secs(5), responses.next()).await.expect("ended by the server");
    let status = end.expect("a status").unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("deadline of 400 ms"), "{}", status.message());
    drop(sender);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_is_closed() {
    let mut config = config();
    config.limits.stream_idle_timeout_ms = 300;
    let server = start(config).await;
    let (sender, mut responses) = open_stream(&server).await;
    let end = tokio::time::timeout(Duration::from_secs(5), responses.next()).await.expect("ended by the server");
    let status = end.expect("a status").unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("sent nothing for 300 ms"), "{}", status.message());
    drop(sender);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_counts_against_the_concurrency_limit_until_it_ends() {
    let mut config = config();
    config.limits.max_concurrent_requests = 1;
    let server = start(config).await;
    let (sender, mut responses) = open_stream(&server).await;
    let (mut inspect, _) = clients(&server).await;
    let request = || InspectRequest { image: image(), ..Default::default() };
    let shed = inspect.inspect(request()).await.unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted, "the open stream holds the only permit: {shed:?}");
    // The client closes its side; the stream ends, and its permit is free again.
    drop(sender);
    assert!(responses.next().await.is_none(), "the stream ended cleanly");
    let mut answered = false;
    for _ in 0..100 {
        match inspect.inspect(request()).await {
            Ok(_) => {
                answered = true;
                break;
            }
            Err(s) => assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(answered, "the permit came back when the stream ended");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_its_message_limit_is_ended_with_resource_exhausted() {
    let mut config = config();
    config.limits.max_stream_messages = 3;
    let server = start(config).await;
    let (mut inspect, _) = clients(&server).await;
    let requests = (0..5).map(|i| InspectRequest { image: image(), request_id: i.to_string(), ..Default::default() });
    let mut responses =
        inspect.inspect_stream(tokio_stream::iter(requests.collect::<Vec<_>>())).await.unwrap().into_inner();
    let mut answered = Vec::new();
    let status = loop {
        match responses.next().await {
            Some(Ok(r)) => answered.push(r.result.expect("an answer").request_id),
            Some(Err(status)) => break status,
            None => panic!("the stream ended without the limit's status after {answered:?}"),
        }
    };
    assert_eq!(answered, ["0", "1", "2"], "the first three are answered, in order");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("more than 3 messages"), "{}", status.message());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_of_a_stream_is_charged_against_the_memory_budget() {
    let mut config = config();
    config.limits.max_message_bytes = 1 << 20;
    config.limits.max_request_bytes_in_flight = 3 << 20;
    let server = start(config).await;
    let metrics = server.metrics_addr.expect("metrics enabled");
    // Not an image: answered with a per-item error, and the stream goes on.
    let large = || InspectRequest { image: vec![7; 700_000], request_id: "large".into(), ..Default::default() };
    let small = || InspectRequest { image: image(), request_id: "small".into(), ..Default::default() };
    let (first, mut first_responses) = open_stream(&server).await;
    first.send(large()).await.unwrap();
    let answer = first_responses.next().await.unwrap().unwrap();
    assert_eq!(answer.error.expect("not an image").request_id, "large");
    // The first stream's latest message holds 2.1 MB of the 3 MiB budget while it stays open.
    let (second, mut second_responses) = open_stream(&server).await;
    second.send(large()).await.unwrap();
    let status = second_responses.next().await.expect("a status").expect_err("over the budget");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("limits.max_request_bytes_in_flight"), "{}", status.message());
    // The first stream goes on; its next, small message takes the large one's place.
    first.send(small()).await.unwrap();
    let answer = first_responses.next().await.unwrap().unwrap();
    assert_eq!(answer.result.expect("an answer").request_id, "small");
    second.send(large()).await.ok();
    drop((first, second));
    assert!(first_responses.next().await.is_none(), "the first stream ended cleanly");
    until_metric(metrics, "vigil_request_bytes_in_flight", &[], 0.0).await;
    server.shutdown().await.unwrap();
}

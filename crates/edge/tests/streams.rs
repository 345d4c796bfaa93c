//! Streams are admitted for their whole life: they hold a concurrency permit until they end,
//! their deadline covers every message, an idle stream is closed, and each message is charged
//! against the memory budget until it is answered.

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
    // Long enough for the first answer on a busy machine.
    config.limits.stream_timeout_ms = 2_000;
    let server = start(config).await;
    let (sender, mut responses) = open_stream(&server).await;
    // The stream stays open (the sender is alive) and quiet: the deadline ends it.
    let end = tokio::time::timeout(Duration::from_secs(30), responses.next()).await.expect("ended by the server");
    let status = end.expect("a status").unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("deadline of 2000 ms"), "{}", status.message());
    drop(sender);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_is_closed() {
    let mut config = config();
    config.limits.stream_idle_timeout_ms = 1_000;
    let server = start(config).await;
    let (sender, mut responses) = open_stream(&server).await;
    let end = tokio::time::timeout(Duration::from_secs(30), responses.next()).await.expect("ended by the server");
    let status = end.expect("a status").unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("sent nothing for 1000 ms"), "{}", status.message());
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
    let (first, mut first_responses) = open_stream(&server).await;
    // While the first stream's large message is in flight it holds 2.1 MB of the 3 MiB budget:
    // a second stream's large message arriving then is refused.
    first.send(large()).await.unwrap();
    let answer = first_responses.next().await.unwrap().unwrap();
    assert_eq!(answer.error.expect("not an image").request_id, "large");
    // Answered, the message holds nothing more, though its stream stays open.
    until_metric(metrics, "vigil_request_bytes_in_flight", &[], 0.0).await;
    let (second, mut second_responses) = open_stream(&server).await;
    second.send(large()).await.unwrap();
    let answer = second_responses.next().await.unwrap().unwrap();
    assert_eq!(answer.error.expect("not an image").request_id, "large", "admitted once the first was answered");
    drop((first, second));
    assert!(first_responses.next().await.is_none(), "the first stream ended cleanly");
    assert!(second_responses.next().await.is_none(), "the second stream ended cleanly");
    until_metric(metrics, "vigil_request_bytes_in_flight", &[], 0.0).await;
    server.shutdown().await.unwrap();
}

/// A stream's handler runs several of its messages at once: each stays charged until its
/// answer is ready, so a client cannot hold more than the budget by pipelining on one stream.
/// A message that does not fit while its stream's own earlier messages hold the budget waits
/// for their answers instead of ending the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_a_stream_pipelines_are_each_charged_until_answered() {
    // The slow model keeps the stream's messages in flight together.
    let repo = slow_repository(32, 64);
    let mut config = config();
    config.model_repository = repo.path().to_path_buf();
    config.limits.max_message_bytes = 128 << 10;
    // Three requests of 64 KiB (charged three times their size each) fit; a fourth does not.
    let request_bytes = 128 * 128 * 4 + 100;
    config.limits.max_request_bytes_in_flight = 3 * 3 * request_bytes + 3 * 1000;
    let server = start(config).await;
    let metrics = server.metrics_addr.expect("metrics enabled");
    let (_, mut oip) = clients(&server).await;
    let request = |id: usize| black_images_request(&id.to_string(), 1);
    // Four at once: the first runs on the slow model while the others wait for it, and the
    // fourth waits for room until the first is answered.
    let responses: Vec<_> = oip
        .model_stream_infer(tokio_stream::iter((0..4).map(request).collect::<Vec<_>>()))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    let answered: Vec<String> = responses
        .iter()
        .map(|r| r.as_ref().expect("no error"))
        .inspect(|r| assert!(r.error_message.is_empty(), "{}", r.error_message))
        .map(|r| r.infer_response.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(answered, ["0", "1", "2", "3"], "all four answered, in order");
    let (_, text) = scrape(metrics);
    assert_eq!(sample(&text, "vigil_stream_budget_waits_total", &[]), Some(1.0), "the fourth waited: {text}");
    until_metric(metrics, "vigil_request_bytes_in_flight", &[], 0.0).await;
    // Sent one after another, each answered before the next: none waits.
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let mut responses = oip.model_stream_infer(ReceiverStream::new(receiver)).await.unwrap().into_inner();
    for id in 0..4 {
        sender.send(request(id)).await.unwrap();
        let answer = responses.next().await.unwrap().unwrap();
        assert_eq!(answer.infer_response.unwrap().id, id.to_string());
    }
    drop(sender);
    assert!(responses.next().await.is_none());
    let (_, text) = scrape(metrics);
    assert_eq!(sample(&text, "vigil_stream_budget_waits_total", &[]), Some(1.0), "{text}");
    server.shutdown().await.unwrap();
}

/// A message still running when its stream's deadline passes is counted and logged the same
/// way: DeadlineExceeded in `vigil_requests_total`, and a record of the version's failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_cut_off_by_its_streams_deadline_counts_as_deadline_exceeded() {
    let repo = slow_repository(32, 64);
    let mut config = config();
    config.model_repository = repo.path().to_path_buf();
    config.limits.stream_timeout_ms = 150;
    let (sink, mut bus) = vigil_logbus::in_process::channel(1_000);
    let (emitter, _forwarder) = vigil_logbus::Emitter::start(sink, 1_000, 100);
    let records = vigil_serving::RecordEmitter::new(emitter, "edge-1");
    let server = vigil_edge::start_with(config, false, Some(records)).await.expect("edge server starts");
    let (mut inspect, _) = clients(&server).await;
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    // The slow model's run takes longer than the whole stream may.
    sender.send(InspectRequest { image: image(), ..Default::default() }).await.unwrap();
    let mut responses = inspect.inspect_stream(ReceiverStream::new(receiver)).await.unwrap().into_inner();
    let end = tokio::time::timeout(Duration::from_secs(5), responses.next()).await.expect("ended by the server");
    let status = end.expect("a status").unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let envelope = tokio::time::timeout(Duration::from_secs(5), bus.recv()).await.expect("a record").unwrap();
    let record =
        <vigil_proto::vigil::v1::PredictionRecord as prost::Message>::decode(envelope.payload.as_slice()).unwrap();
    assert!(record.error.starts_with("DeadlineExceeded"), "{record:?}");
    let (_, text) = scrape(server.metrics_addr.unwrap());
    let count = |status| sample(&text, "vigil_requests_total", &[("api", "inspect"), ("status", status)]);
    assert_eq!((count("DeadlineExceeded"), count("Cancelled")), (Some(1.0), None), "{text}");
    drop(sender);
    server.shutdown().await.unwrap();
}

/// A stream still running when the drain timeout passes is ended by the server, UNAVAILABLE in
/// its trailers (the client retries elsewhere), and the message it had not answered is logged
/// as the version's failure: the server stops in time, and no call goes on behind its records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_still_running_when_the_drain_ends_is_closed_with_unavailable_and_logged() {
    let repo = slow_repository(1, 64);
    let mut config = config();
    config.model_repository = repo.path().to_path_buf();
    config.limits.drain_timeout_ms = 200;
    let (sink, mut bus) = vigil_logbus::in_process::channel(1_000);
    let (emitter, _forwarder) = vigil_logbus::Emitter::start(sink, 1_000, 100);
    let records = vigil_serving::RecordEmitter::new(emitter, "edge-1");
    let server = vigil_edge::start_with(config, false, Some(records)).await.expect("edge server starts");
    let (mut inspect, _) = clients(&server).await;
    let (sender, receiver) = tokio::sync::mpsc::channel(8);
    let mut responses = inspect.inspect_stream(ReceiverStream::new(receiver)).await.unwrap().into_inner();
    // Runs of several hundred milliseconds, one at a time: far more work than the drain allows.
    for _ in 0..4 {
        sender.send(InspectRequest { image: image(), ..Default::default() }).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let stopping = tokio::spawn(server.shutdown());
    let status = loop {
        let next = tokio::time::timeout(Duration::from_secs(10), responses.next()).await.expect("the server ends it");
        match next {
            Some(Ok(answer)) => assert!(answer.result.is_some(), "{answer:?}"),
            Some(Err(status)) => break status,
            None => panic!("the stream ended without a status"),
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{}", status.message());
    stopping.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "stopped in {:?}", started.elapsed());
    let mut errors = Vec::new();
    while let Ok(Some(envelope)) = tokio::time::timeout(Duration::from_millis(500), bus.recv()).await {
        let record =
            <vigil_proto::vigil::v1::PredictionRecord as prost::Message>::decode(envelope.payload.as_slice()).unwrap();
        if !record.error.is_empty() {
            errors.push(record.error);
        }
    }
    assert!(!errors.is_empty() && errors.iter().all(|e| e.starts_with("Unavailable")), "{errors:?}");
    drop(sender);
}

/// A stream is idle only when neither side sends anything: a client that keeps sending while
/// the model takes longer than the idle timeout to answer is not cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_client_keeps_sending_is_not_idle_while_its_answers_take_long() {
    let repo = slow_repository(1, 64);
    let mut config = config();
    config.model_repository = repo.path().to_path_buf();
    config.limits.stream_idle_timeout_ms = 150;
    let server = start(config).await;
    let (mut inspect, _) = clients(&server).await;
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    let mut responses = inspect.inspect_stream(ReceiverStream::new(receiver)).await.unwrap().into_inner();
    let feeding = tokio::spawn(async move {
        for _ in 0..6 {
            sender.send(InspectRequest { image: image(), ..Default::default() }).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sender
    });
    let mut last = std::time::Instant::now();
    let mut longest_wait = Duration::ZERO;
    for i in 0..6 {
        let answer = tokio::time::timeout(Duration::from_secs(30), responses.next()).await.expect("an answer");
        let answer = answer.expect("not ended").unwrap_or_else(|status| panic!("message {i}: {status:?}"));
        assert!(answer.result.is_some(), "{answer:?}");
        longest_wait = longest_wait.max(last.elapsed());
        last = std::time::Instant::now();
    }
    // The test means something only where answers came further apart than the idle timeout.
    assert!(longest_wait > Duration::from_millis(150), "answers {longest_wait:?} apart at most");
    drop(feeding.await.unwrap());
    server.shutdown().await.unwrap();
}

//! Voice search end to end with the models `./dev setup` fetched: spoken queries synthesised
//! with espeak-ng, Silero VAD run on the device side, Moonshine in vigil-cloud over real gRPC,
//! the catalog searched; Rust's VAD probabilities and recognised tokens equal the onnxruntime
//! Python package's on the same audio; every kind of bad stream gets its precise status.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;
use vigil_cloud::CloudConfig;
use vigil_logbus::Emitter;
use vigil_proto::vigil::v1::voice_search_client::VoiceSearchClient;
use vigil_proto::vigil::v1::{
    FeedbackEvent, PredictionRecord, RecordStatus, SearchClick, SearchConfig, SearchFeedback, SearchRequest,
    SearchResponse, SearchResult, SpeechSegment, VadReport, search_feedback, search_request, search_response,
};
use vigil_serving::records::RecordEmitter;
use vigil_speech::asr::{DecodeLimits, Recogniser, Tokenizer};
use vigil_speech::audio::{self, SAMPLES_PER_MS};
use vigil_speech::vad::{self, VadParams, VadStream};
use vigil_speech::{LocalModel, text};
use vigil_testkit::speech::{self as voices, ADULT};

fn config(models: &Path) -> CloudConfig {
    let mut config = CloudConfig { model_repository: models.to_path_buf(), ..CloudConfig::default() };
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.listen = "127.0.0.1:0".parse().unwrap();
    config.models.watch_interval_ms = 0;
    config.voice_search.catalog = voices::repo_root().join("deploy/catalog/products.csv");
    config
}

/// A server with its records on an in-process bus the test reads.
async fn server(config: CloudConfig) -> (vigil_cloud::RunningServer, mpsc::Receiver<vigil_logbus::Envelope>) {
    let (sink, records) = vigil_logbus::in_process::channel(1024);
    let (emitter, _task) = Emitter::start(sink, 1024, 8);
    let server = vigil_cloud::start(config, false, Some(RecordEmitter::new(emitter, "cloud-test"))).await.unwrap();
    (server, records)
}

async fn client(server: &vigil_cloud::RunningServer) -> VoiceSearchClient<Channel> {
    VoiceSearchClient::connect(format!("http://{}", server.addr)).await.unwrap()
}

fn search_config() -> SearchConfig {
    SearchConfig { language: "en".into(), sample_rate: 16_000, device_id: "test-phone".into(), ..Default::default() }
}

fn config_message(c: SearchConfig) -> SearchRequest {
    SearchRequest { message: Some(search_request::Message::Config(c)) }
}

fn segment_message(sequence: u64, samples: &[f32]) -> SearchRequest {
    let segment = SpeechSegment {
        sequence,
        pcm16: audio::f32_to_pcm16(samples),
        start_ms: 0,
        end_ms: (samples.len() / SAMPLES_PER_MS) as u64,
    };
    SearchRequest { message: Some(search_request::Message::Segment(segment)) }
}

fn vad_report_message(report: VadReport) -> SearchRequest {
    SearchRequest { message: Some(search_request::Message::VadReport(report)) }
}

/// Streams `messages`, half-closes, and returns every response or the status that ended it.
async fn exchange(
    client: &mut VoiceSearchClient<Channel>,
    messages: Vec<SearchRequest>,
) -> Result<Vec<SearchResponse>, tonic::Status> {
    let stream = tokio_stream::iter(messages);
    let mut responses = client.search(stream).await?.into_inner();
    let mut out = Vec::new();
    while let Some(r) = responses.message().await? {
        out.push(r);
    }
    Ok(out)
}

fn final_result(responses: &[SearchResponse]) -> &SearchResult {
    match responses.last().and_then(|r| r.message.as_ref()) {
        Some(search_response::Message::Result(r)) => r,
        other => panic!("the stream did not end with a result: {other:?}"),
    }
}

/// The sum of every sample of `metric` in the server's /metrics whose labels contain `labels`.
async fn metric(server: &vigil_cloud::RunningServer, metric: &str, labels: &str) -> f64 {
    let body =
        reqwest::get(format!("http://{}/metrics", server.metrics_addr.unwrap())).await.unwrap().text().await.unwrap();
    body.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn python(args: &[&str]) -> String {
    let python = std::env::var("VIGIL_PYTHON")
        .expect("VIGIL_PYTHON is not set: run the tests through `./dev test` (a Python with onnxruntime and numpy)");
    let script = voices::repo_root().join("tests/peers/speech_reference.py");
    let out = std::process::Command::new(python).arg(script).args(args).output().unwrap();
    assert!(out.status.success(), "the Python reference failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn write_f32(path: &Path, samples: &[f32]) {
    std::fs::write(path, samples.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

/// VAD over `samples` on this side, as `vigil speak` runs it.
async fn speech_spans(vad: &LocalModel, samples: &[f32], params: VadParams) -> (Vec<f32>, Vec<std::ops::Range<usize>>) {
    let probabilities = VadStream::new(vad).probabilities(samples).await.unwrap();
    let spans = vad::speech_spans(&probabilities, samples.len(), params);
    (probabilities, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_vad_and_recognition_equal_the_onnxruntime_python_reference() {
    let models = voices::cloud_models();
    let (server, _records) = server(config(&models)).await;
    let work = tempfile::tempdir().unwrap();

    // VAD over two phrases with known silence around and between them.
    let (first, second) = (voices::say("red running shoes", ADULT), voices::say("organic green tea", ADULT));
    let mut recording = voices::silence(800);
    let layout = [(recording.len(), recording.len() + first.len())];
    recording.extend(&first);
    recording.extend(voices::silence(1200));
    let layout = [layout[0], (recording.len(), recording.len() + second.len())];
    recording.extend(&second);
    recording.extend(voices::silence(900));
    let vad_model = LocalModel::load(&models.join("silero-vad/1"), 1).unwrap();
    let params = VadParams::default();
    let (probabilities, spans) = speech_spans(&vad_model, &recording, params).await;
    write_f32(&work.path().join("recording.f32"), &recording);
    let reference: Vec<f32> = python(&[
        "silero",
        models.join("silero-vad/1/model.onnx").to_str().unwrap(),
        work.path().join("recording.f32").to_str().unwrap(),
    ])
    .lines()
    .map(|l| l.parse().unwrap())
    .collect();
    assert_eq!(probabilities.len(), reference.len());
    for (i, (got, want)) in probabilities.iter().zip(&reference).enumerate() {
        assert!((got - want).abs() <= 1e-4, "chunk {i}: {got} vs onnxruntime's {want}");
    }
    // Each phrase is one span: it covers the speech (give or take a chunk, where espeak's
    // quiet consonants sit under the threshold) and keeps no more than the padding around it.
    assert_eq!(spans.len(), 2, "{spans:?} for phrases at {layout:?}");
    let pad = params.speech_pad_ms as usize * SAMPLES_PER_MS;
    let slack = vad::CHUNK * 3;
    for (span, (start, end)) in spans.iter().zip(layout) {
        assert!(span.start <= start + slack && span.start + pad + slack >= start, "{span:?} vs {start}..{end}");
        assert!(span.end + slack >= end && span.end <= end + pad + slack, "{span:?} vs {start}..{end}");
    }

    // Recognition: the decoder loop with its cache in Rust gives Python's tokens exactly.
    let encoder = server.repository.get("moonshine-tiny-en-encoder", "").unwrap();
    let decoder = server.repository.get("moonshine-tiny-en-decoder", "").unwrap();
    let tokenizer = Arc::new(Tokenizer::load(&decoder.path.join("tokenizer.bin")).unwrap());
    let recogniser = Recogniser { encoder, decoder, tokenizer, limits: DecodeLimits::default() };
    let mut files = Vec::new();
    let mut rust_tokens = Vec::new();
    for (i, phrase) in
        ["stainless steel water bottle", "wireless noise cancelling headphones", "yoga mat"].iter().enumerate()
    {
        let clip = audio::pad(&voices::say(phrase, ADULT), 500, 500);
        let path = work.path().join(format!("clip{i}.f32"));
        write_f32(&path, &clip);
        files.push(path.to_str().unwrap().to_string());
        let recognised = recogniser.recognise(&clip).await.unwrap();
        assert!(!recognised.truncated && !recognised.tokens.is_empty(), "{phrase}: {recognised:?}");
        rust_tokens.push(recognised.tokens);
    }
    let mut args = vec![
        "moonshine",
        models.join("moonshine-tiny-en-encoder/1/model.onnx").to_str().unwrap().to_owned().leak() as &str,
        models.join("moonshine-tiny-en-decoder/1/model.onnx").to_str().unwrap().to_owned().leak() as &str,
    ];
    args.extend(files.iter().map(String::as_str));
    let python_tokens: Vec<Vec<i64>> = python(&args).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rust_tokens, python_tokens);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoken_queries_find_their_products_and_both_stages_are_logged() {
    let models = voices::cloud_models();
    let captures = tempfile::tempdir().unwrap();
    let mut config = config(&models);
    // Every query's audio kept for retraining.
    config.capture = toml::from_str(&format!(
        "enabled = true\nstore = \"{}\"\nspool = \"{}\"\nrate = 1.0\n",
        captures.path().join("store").display(),
        captures.path().join("spool").display()
    ))
    .unwrap();
    let (server, mut records) = server(config).await;
    let mut client = client(&server).await;
    let vad_model = LocalModel::load(&models.join("silero-vad/1"), 1).unwrap();
    let mut last_audio = Vec::new();

    let queries = voices::queries();
    assert!(queries.len() >= 20);
    let (mut errors, mut words, mut found) = (0usize, 0usize, 0usize);
    let mut table = String::from("query | transcript | WER | first hit\n");
    let mut last = None;
    for query in &queries {
        // Recorded with silence around the speech; only the VAD's spans are sent.
        let mut recording = voices::silence(600);
        recording.extend(voices::say(&query.text, ADULT));
        recording.extend(voices::silence(700));
        let (_, spans) = speech_spans(&vad_model, &recording, VadParams::default()).await;
        assert!(!spans.is_empty(), "no speech found in {:?}", query.text);
        let sent: usize = spans.iter().map(|s| s.len()).sum();
        assert!(sent < recording.len(), "the silence around {:?} was sent", query.text);
        let mut messages = vec![config_message(search_config())];
        messages.extend(spans.iter().enumerate().map(|(i, s)| segment_message(i as u64, &recording[s.clone()])));
        last_audio = spans.iter().flat_map(|s| audio::f32_to_pcm16(&recording[s.clone()])).collect();
        let responses = exchange(&mut client, messages).await.unwrap();
        assert_eq!(responses.len(), spans.len() + 1, "a transcript per segment, then the result");
        let result = final_result(&responses).clone();
        let reference: Vec<String> = text::normalise(&query.text).split(' ').map(String::from).collect();
        let heard = text::normalise(&result.transcript);
        let heard: Vec<&str> = heard.split_whitespace().collect();
        let reference: Vec<&str> = reference.iter().map(String::as_str).collect();
        errors += text::word_errors(&reference, &heard);
        words += reference.len();
        let first = result.hits.first().map(|h| h.product_id.clone()).unwrap_or_default();
        found += usize::from(first == query.product_id);
        table += &format!(
            "{} | {} | {:.2} | {}\n",
            query.text,
            result.transcript,
            text::word_error_rate(&query.text, &result.transcript),
            first
        );
        assert_eq!(result.query, text::normalise(&result.transcript));
        assert!(result.hits.windows(2).all(|w| w[0].rank + 1 == w[1].rank && w[0].score >= w[1].score));
        assert_eq!(result.model_name, "moonshine-tiny-en-decoder");
        last = Some(result);
    }
    let wer = errors as f64 / words as f64;
    println!("{table}word error rate {wer:.3} over {words} words; first hit right {found} of {}", queries.len());
    // espeak-ng's voice is far from the speech Moonshine learnt from: about a third of the
    // words come out wrong, yet most queries still find their product.
    assert!(wer <= 0.5, "word error rate {wer:.3}\n{table}");
    assert!(found * 10 >= queries.len() * 6, "first hit right for only {found} of {}\n{table}", queries.len());

    // The server's own account of the same queries.
    assert_eq!(metric(&server, "vigil_voice_search_queries_total", "status=\"Ok\"").await, queries.len() as f64);
    let audio_seconds = metric(&server, "vigil_voice_search_audio_seconds_total", "").await;
    assert!(audio_seconds > queries.len() as f64 * 0.5, "{audio_seconds} s of speech for {} queries", queries.len());
    assert!(metric(&server, "vigil_voice_search_segments_total", "").await >= queries.len() as f64);
    assert_eq!(metric(&server, "vigil_voice_search_answer_seconds_count", "").await, queries.len() as f64);

    // Both stages of the last query were logged with one trace id; the search record's id is
    // the query id feedback refers to.
    let last = last.unwrap();
    let mut stage_records = Vec::new();
    while stage_records.len() < 2 {
        let envelope = tokio::time::timeout(Duration::from_secs(5), records.recv()).await.unwrap().unwrap();
        let record = <PredictionRecord as prost::Message>::decode(envelope.payload.as_slice()).unwrap();
        if record.trace_id == last.trace_id {
            stage_records.push(record);
        }
    }
    let asr = stage_records.iter().find(|r| r.api == "voice_search.asr").expect("an ASR record");
    let search = stage_records.iter().find(|r| r.api == "voice_search.search").expect("a search record");
    assert_eq!(search.prediction_id, last.query_id);
    assert_eq!(asr.output.as_ref().unwrap().text, last.transcript);
    assert_eq!(
        search.output.as_ref().unwrap().label,
        last.hits.first().map(|h| h.product_id.clone()).unwrap_or_default()
    );
    let feature = |name: &str| asr.features.iter().find(|f| f.name == name).unwrap().value;
    assert!(feature("audio_seconds") > 0.3 && feature("audio_seconds") < 5.0, "{asr:?}");
    assert!(feature("pitch_hz") > 60.0 && feature("pitch_hz") < 250.0, "an adult voice: {asr:?}");
    assert!(feature("rms_dbfs") < -3.0 && feature("rms_dbfs") > -40.0, "{asr:?}");
    assert_eq!(feature("truncated_pieces"), 0.0, "decoding ended by the recogniser: {asr:?}");
    assert_eq!(asr.device_id, "test-phone");
    // Its audio, every segment as sent, one after another, was captured as a WAV file the
    // record names.
    assert!(asr.capture.starts_with("moonshine-tiny-en-decoder/"), "{asr:?}");
    let wav = captures.path().join("store").join(&asr.capture);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !wav.is_file() {
        assert!(std::time::Instant::now() < deadline, "{} never stored", asr.capture);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut wav = hound::WavReader::open(&wav).unwrap();
    assert_eq!((wav.spec().sample_rate, wav.spec().channels), (16_000, 1));
    let kept: Vec<i16> = wav.samples::<i16>().map(Result::unwrap).collect();
    let sent: Vec<i16> = last_audio.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    assert_eq!(kept, sent, "the query's audio as sent");

    // Feedback: a click on the first result becomes a feedback event keyed by the query.
    let click = SearchFeedback {
        query_id: last.query_id.clone(),
        action: Some(search_feedback::Action::Click(SearchClick { product_id: "P-1009".into(), rank: 1 })),
        session_id: "s-1".into(),
    };
    let ack = client.feedback(click.clone()).await.unwrap().into_inner();
    // The same click again is the same event (stored once); another result's is another.
    assert_eq!(client.feedback(click.clone()).await.unwrap().into_inner().event_id, ack.event_id);
    let second = SearchFeedback {
        action: Some(search_feedback::Action::Click(SearchClick { product_id: "P-1009".into(), rank: 2 })),
        ..click.clone()
    };
    assert_ne!(client.feedback(second).await.unwrap().into_inner().event_id, ack.event_id);
    // The same query id spelled otherwise (upper case, no hyphens) is the same query: the same
    // event, stored once, under the id as the server gave it.
    let respelled = SearchFeedback { query_id: last.query_id.to_uppercase().replace('-', ""), ..click.clone() };
    assert_ne!(respelled.query_id, last.query_id);
    assert_eq!(client.feedback(respelled).await.unwrap().into_inner().event_id, ack.event_id);
    let event = loop {
        let envelope = tokio::time::timeout(Duration::from_secs(5), records.recv()).await.unwrap().unwrap();
        if envelope.topic == vigil_logbus::topics::FEEDBACK {
            break <FeedbackEvent as prost::Message>::decode(envelope.payload.as_slice()).unwrap();
        }
    };
    assert_eq!(
        (event.event_id.as_str(), event.prediction_id.as_str()),
        (ack.event_id.as_str(), last.query_id.as_str())
    );
    assert_eq!((event.kind.as_str(), event.value.as_str()), ("click", "P-1009@1"));
    // The repeated click, the second one and the respelled one, on their way as events; the
    // respelled one names the query as the server gave it.
    let mut events = Vec::new();
    for _ in 0..3 {
        let envelope = tokio::time::timeout(Duration::from_secs(5), records.recv()).await.unwrap().unwrap();
        assert_eq!(envelope.topic, vigil_logbus::topics::FEEDBACK);
        events.push(<FeedbackEvent as prost::Message>::decode(envelope.payload.as_slice()).unwrap());
    }
    assert!(events.iter().all(|e| e.prediction_id == last.query_id), "{events:?}");
    assert_eq!(events.iter().filter(|e| e.event_id == ack.event_id).count(), 2, "{events:?}");
    // A rank no result has: refused, not stored as one more click.
    for rank in [0, 51] {
        let click = SearchFeedback {
            action: Some(search_feedback::Action::Click(SearchClick { product_id: "P-1009".into(), rank })),
            ..click.clone()
        };
        let bad = client.feedback(click).await.unwrap_err();
        assert!(bad.code() == Code::InvalidArgument && bad.message().contains("click.rank"), "{bad:?}");
    }
    for (action, kind) in [
        (search_feedback::Action::RedoSearch(true), "redo_search"),
        (search_feedback::Action::SwitchToTyping(true), "switch_to_typing"),
    ] {
        let request =
            SearchFeedback { query_id: last.query_id.clone(), action: Some(action), session_id: String::new() };
        client.feedback(request).await.unwrap();
        let envelope = tokio::time::timeout(Duration::from_secs(5), records.recv()).await.unwrap().unwrap();
        assert_eq!(<FeedbackEvent as prost::Message>::decode(envelope.payload.as_slice()).unwrap().kind, kind);
    }
    let bad = client.feedback(SearchFeedback { query_id: "nope".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let bad =
        client.feedback(SearchFeedback { query_id: last.query_id.clone(), ..Default::default() }).await.unwrap_err();
    assert!(bad.code() == Code::InvalidArgument && bad.message().contains("action"), "{bad:?}");
    let long_session = SearchFeedback {
        query_id: last.query_id.clone(),
        session_id: "s".repeat(300),
        action: Some(search_feedback::Action::RedoSearch(true)),
    };
    let bad = client.feedback(long_session).await.unwrap_err();
    assert!(bad.code() == Code::InvalidArgument && bad.message().contains("session_id is 300 bytes"), "{bad:?}");
    server.shutdown().await.unwrap();
}

/// A request stream's message the server refuses is said as what it is, not as the client
/// leaving: one that is not a `SearchRequest` is INVALID_ARGUMENT and the query is logged as
/// invalid input with what it heard before; one over `limits.max_message_bytes` is
/// RESOURCE_EXHAUSTED, naming the limit, and not logged (as a unary call refused by it is not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_message_that_cannot_be_read_or_is_too_large_is_refused_for_what_it_is() {
    use prost::Message as _;
    /// A `SearchRequest` as its fields' bytes, so that a test can send what no client would.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Verbatim {
        #[prost(bytes = "vec", tag = "1")]
        config: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        segment: Vec<u8>,
    }
    let models = voices::cloud_models();
    let mut config = config(&models);
    config.limits.max_message_bytes = 200_000;
    let (server, mut records) = server(config).await;
    let speech = voices::say("a blue kettle", ADULT);
    let one_second = &speech[..16_000.min(speech.len())];
    let heard_seconds = one_second.len() as f64 / 16_000.0;
    let piece = |sequence: u64, samples: &[f32]| SpeechSegment {
        sequence,
        pcm16: audio::f32_to_pcm16(samples),
        start_ms: 0,
        end_ms: (samples.len() / SAMPLES_PER_MS) as u64,
    };

    // Not a SearchRequest: segment 1's bytes are a cut-off varint.
    let messages = vec![
        Verbatim { config: search_config().encode_to_vec(), segment: Vec::new() },
        Verbatim { config: Vec::new(), segment: piece(0, one_second).encode_to_vec() },
        Verbatim { config: Vec::new(), segment: vec![0xff, 0xff, 0xff] },
    ];
    let channel = Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/vigil.v1.VoiceSearch/Search");
    let codec = tonic_prost::ProstCodec::<Verbatim, SearchResponse>::default();
    let outcome = async {
        let mut responses =
            grpc.streaming(tonic::Request::new(tokio_stream::iter(messages)), path, codec).await?.into_inner();
        while responses.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    };
    let bad = outcome.await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("not a valid vigil.v1.SearchRequest"), "{bad:?}");
    let record = loop {
        let envelope = tokio::time::timeout(Duration::from_secs(5), records.recv()).await.unwrap().unwrap();
        let record = <PredictionRecord as prost::Message>::decode(envelope.payload.as_slice()).unwrap();
        if record.api == "voice_search.asr" {
            break record;
        }
    };
    assert_eq!(record.status, RecordStatus::InvalidInput as i32, "{record:#?}");
    assert!(record.error.starts_with("InvalidArgument: the message is not a valid"), "{}", record.error);
    let audio = record.features.iter().find(|f| f.name == "audio_seconds").unwrap().value;
    assert!((audio - heard_seconds).abs() < 1e-9, "what it heard before: audio_seconds {audio}");

    // Over the message limit: 8 s of audio is 256,000 bytes.
    let long: Vec<f32> = speech.iter().cycle().take(8 * 16_000).copied().collect();
    let mut client = client(&server).await;
    let messages = vec![config_message(search_config()), segment_message(0, one_second), segment_message(1, &long)];
    let bad = exchange(&mut client, messages).await.unwrap_err();
    assert_eq!(bad.code(), Code::ResourceExhausted, "{bad:?}");
    assert!(bad.message().contains("limits.max_message_bytes"), "{bad:?}");
    // Not logged: the next record is the next query's.
    let responses =
        exchange(&mut client, vec![config_message(search_config()), segment_message(0, one_second)]).await.unwrap();
    let answered = final_result(&responses);
    let envelope = tokio::time::timeout(Duration::from_secs(5), records.recv()).await.unwrap().unwrap();
    let record = <PredictionRecord as prost::Message>::decode(envelope.payload.as_slice()).unwrap();
    assert_eq!(
        (record.prediction_id.as_str(), record.status),
        (answered.transcript_id.as_str(), RecordStatus::Ok as i32),
        "{record:#?}"
    );
    server.shutdown().await.unwrap();
}

/// Decoding cut at its token limit says so: in the segment's answer, the query's record and the
/// server's metrics (the transcript may be missing its end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoding_cut_at_the_token_limit_is_reported() {
    let models = voices::cloud_models();
    let mut config = config(&models);
    // One token a second: "wireless noise cancelling headphones" needs several more.
    config.voice_search.max_tokens_per_second = 1.0;
    let (server, mut records) = server(config).await;
    let mut client = client(&server).await;
    let speech = voices::say("wireless noise cancelling headphones", ADULT);
    let responses =
        exchange(&mut client, vec![config_message(search_config()), segment_message(0, &speech)]).await.unwrap();
    let Some(search_response::Message::Segment(segment)) = &responses[0].message else { panic!("{responses:?}") };
    assert!(segment.truncated, "{segment:?}");
    let result = final_result(&responses);
    let words = result.transcript.split_whitespace().count();
    assert!(words <= 3, "cut at about three tokens: {:?}", result.transcript);
    let truncated = metric(&server, "vigil_voice_search_truncated_pieces_total", "").await;
    assert!(truncated >= 1.0, "{truncated}");
    let asr = loop {
        let envelope = tokio::time::timeout(Duration::from_secs(5), records.recv()).await.unwrap().unwrap();
        let record = <PredictionRecord as prost::Message>::decode(envelope.payload.as_slice()).unwrap();
        if record.api == "voice_search.asr" {
            break record;
        }
    };
    let pieces = asr.features.iter().find(|f| f.name == "truncated_pieces").unwrap().value;
    assert_eq!(pieces, truncated, "{asr:?}");
    server.shutdown().await.unwrap();
}

/// A query whose call is cut while the server still waits for its config (here the server's
/// deadline for a stream) is counted with its end, as every other query is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_cut_before_its_config_is_counted() {
    let models = voices::cloud_models();
    let mut config = config(&models);
    // Shorter than the wait for the config (5 s): the call's deadline cuts the handler. The
    // server's, not the client's, so that no client-side cancel races it.
    config.limits.stream_timeout_ms = 300;
    let (server, _records) = server(config).await;
    let mut client = client(&server).await;
    let (sender, receiver) = mpsc::channel::<SearchRequest>(1);
    let status = client.search(ReceiverStream::new(receiver)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&server, "vigil_voice_search_queries_total", "").await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the cut query was never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(metric(&server, "vigil_voice_search_queries_total", "").await, 1.0, "counted once");
    let timed_out = metric(&server, "vigil_voice_search_queries_total", "status=\"DeadlineExceeded\"").await;
    assert_eq!(timed_out, 1.0, "at its deadline, as the server's deadline");
    drop(sender);
    server.shutdown().await.unwrap();
}

/// A query still open when the server stops is cut by the drain and logged as a failure before
/// the server's shutdown returns (its task is waited for before the records stop). The race
/// this closes is narrow: on an idle machine the query's task also wins it untracked, so this
/// checks the outcome, not the tracking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_cut_by_the_drain_is_logged_before_the_server_stops() {
    let models = voices::cloud_models();
    let mut config = config(&models);
    config.limits.drain_timeout_ms = 500;
    let (sink, mut records) = vigil_logbus::in_process::channel(1024);
    let (emitter, _task) = Emitter::start(sink, 1024, 8);
    let stats = emitter.stats().clone();
    let server = vigil_cloud::start(config, false, Some(RecordEmitter::new(emitter, "cloud-test"))).await.unwrap();
    let mut client = client(&server).await;
    let (sender, receiver) = mpsc::channel(4);
    sender.send(config_message(search_config())).await.unwrap();
    sender.send(segment_message(0, &voices::say("red running shoes", ADULT))).await.unwrap();
    let mut responses = client.search(ReceiverStream::new(receiver)).await.unwrap().into_inner();
    let first = responses.message().await.unwrap().unwrap();
    assert!(matches!(first.message, Some(search_response::Message::Segment(_))), "{first:?}");
    // The client keeps its stream open; the server stops.
    server.shutdown().await.unwrap();
    assert_eq!(stats.snapshot().0, 1, "the cut query's record was handed over before shutdown returned");
    let envelope = tokio::time::timeout(Duration::from_secs(5), records.recv()).await.unwrap().unwrap();
    let record = <PredictionRecord as prost::Message>::decode(envelope.payload.as_slice()).unwrap();
    assert_eq!((record.api.as_str(), record.status), ("voice_search.asr", RecordStatus::Error as i32), "{record:?}");
    assert!(!record.output.unwrap_or_default().text.is_empty(), "what it recognised before the cut");
    drop(sender);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_get_precise_statuses_and_leave_nothing_running() {
    let models = voices::cloud_models();
    let mut config = config(&models);
    config.voice_search.config_timeout_ms = 300;
    config.voice_search.idle_timeout_ms = 600;
    config.voice_search.max_segments = 3;
    config.voice_search.max_query_ms = 8_000;
    let (server, mut records) = server(config).await;
    let mut client = client(&server).await;
    let speech = voices::say("yoga mat", ADULT);
    let ok = |c: SearchConfig| config_message(c);

    let cases: Vec<(&str, Vec<SearchRequest>, Code, &str)> = vec![
        (
            "wrong sample rate",
            vec![ok(SearchConfig { sample_rate: 8_000, ..search_config() })],
            Code::InvalidArgument,
            "sample_rate 8000",
        ),
        (
            "a language not served",
            vec![ok(SearchConfig { language: "fr".into(), ..search_config() })],
            Code::InvalidArgument,
            "language 'fr'",
        ),
        (
            "a language tag of 20 KB (echoed, it would not fit a status header)",
            vec![ok(SearchConfig { language: "x".repeat(20_000), ..search_config() })],
            Code::InvalidArgument,
            "language is 20000 bytes long; the limit is 256",
        ),
        (
            "too many results",
            vec![ok(SearchConfig { max_results: 51, ..search_config() })],
            Code::InvalidArgument,
            "max_results 51",
        ),
        (
            "a device id of 1 KB",
            vec![ok(SearchConfig { device_id: "d".repeat(1024), ..search_config() })],
            Code::InvalidArgument,
            "device_id is 1024 bytes long; the limit is 256",
        ),
        (
            "a NUL in the session id",
            vec![ok(SearchConfig { session_id: "s\0".into(), ..search_config() })],
            Code::InvalidArgument,
            "session_id holds the control character",
        ),
        (
            "segment before config",
            vec![segment_message(0, &speech)],
            Code::InvalidArgument,
            "first message must be SearchConfig",
        ),
        ("no config at all", vec![], Code::InvalidArgument, "ended before its SearchConfig"),
        (
            "odd byte count",
            vec![
                ok(search_config()),
                SearchRequest {
                    message: Some(search_request::Message::Segment(SpeechSegment {
                        pcm16: vec![1, 2, 3],
                        ..Default::default()
                    })),
                },
            ],
            Code::InvalidArgument,
            "odd byte count (3)",
        ),
        (
            "empty segment",
            vec![ok(search_config()), segment_message(0, &[])],
            Code::InvalidArgument,
            "segment 0: no audio",
        ),
        (
            "segment over 30 s",
            vec![ok(search_config()), segment_message(0, &vec![0.01; 31 * 16_000])],
            Code::InvalidArgument,
            "over the 30000 ms",
        ),
        (
            "out of order",
            vec![ok(search_config()), segment_message(0, &speech), segment_message(2, &speech)],
            Code::InvalidArgument,
            "segment 2 arrived where 1 was due",
        ),
        ("config twice", vec![ok(search_config()), ok(search_config())], Code::InvalidArgument, "may only come first"),
        (
            "vad report first",
            vec![vad_report_message(VadReport { model_name: "silero-vad".into(), ..Default::default() })],
            Code::InvalidArgument,
            "not a vad_report",
        ),
        (
            "vad report counting other segments",
            vec![
                ok(search_config()),
                segment_message(0, &speech),
                vad_report_message(VadReport {
                    model_name: "silero-vad".into(),
                    recorded_ms: 2_000,
                    speech_ms: 900,
                    segments: 2,
                    ..Default::default()
                }),
            ],
            Code::InvalidArgument,
            "it counts 2 segments but 1 were sent",
        ),
        (
            "vad report with more speech than recording",
            vec![
                ok(search_config()),
                vad_report_message(VadReport {
                    model_name: "silero-vad".into(),
                    recorded_ms: 100,
                    speech_ms: 900,
                    ..Default::default()
                }),
            ],
            Code::InvalidArgument,
            "speech_ms 900 is more than recorded_ms 100",
        ),
        (
            "vad report naming its model with a control character",
            vec![
                ok(search_config()),
                vad_report_message(VadReport { model_name: "silero\u{0}vad".into(), ..Default::default() }),
            ],
            Code::InvalidArgument,
            "vad_report.model_name holds the control character",
        ),
        (
            "more segments than a query may have",
            (0..4).map(|i| segment_message(i, &speech)).fold(vec![ok(search_config())], |mut v, m| {
                v.push(m);
                v
            }),
            Code::InvalidArgument,
            "more than 3 segments in one query",
        ),
        (
            "more audio than a query may have (5 s, then 5 s more)",
            vec![ok(search_config()), segment_message(0, &vec![0.01; 80_000]), segment_message(1, &vec![0.01; 80_000])],
            Code::InvalidArgument,
            "segment 1: the query passed 8000 ms of audio",
        ),
        (
            "a segment after the vad report",
            vec![
                ok(search_config()),
                vad_report_message(VadReport { model_name: "silero-vad".into(), ..Default::default() }),
                segment_message(0, &speech),
            ],
            Code::InvalidArgument,
            "vad_report must be the last message",
        ),
    ];
    for (what, messages, code, message) in cases {
        let status = exchange(&mut client, messages).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(status.message().contains(message), "{what}: {status:?}");
    }

    // A stream that opens and says nothing: DEADLINE_EXCEEDED after config_timeout_ms.
    let (tx, rx) = mpsc::channel::<SearchRequest>(1);
    let status = client.search(ReceiverStream::new(rx)).await.expect_err("a silent stream");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // One that falls silent after its config and a segment: the idle limit ends it.
    drop(tx);
    let (tx, rx) = mpsc::channel::<SearchRequest>(4);
    tx.send(ok(search_config())).await.unwrap();
    tx.send(segment_message(0, &speech)).await.unwrap();
    let mut responses = client.search(ReceiverStream::new(rx)).await.unwrap().into_inner();
    assert!(matches!(
        responses.message().await.unwrap().and_then(|r| r.message),
        Some(search_response::Message::Segment(_))
    ));
    let status = responses.message().await.expect_err("an idle stream");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    drop(tx);

    // Clients that leave mid-stream: the server's streams all end (admission's in-flight count
    // returns to zero) and it still answers the next client.
    for _ in 0..4 {
        let (tx, rx) = mpsc::channel::<SearchRequest>(4);
        tx.send(ok(search_config())).await.unwrap();
        tx.send(segment_message(0, &speech)).await.unwrap();
        let mut leaving = VoiceSearchClient::connect(format!("http://{}", server.addr)).await.unwrap();
        let responses = leaving.search(ReceiverStream::new(rx)).await.unwrap();
        drop(responses);
        drop(leaving);
        drop(tx);
    }
    let metrics_url = format!("http://{}/metrics", server.metrics_addr.unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body = reqwest::get(&metrics_url).await.unwrap().text().await.unwrap();
        let in_flight: f64 = body
            .lines()
            .find(|l| l.starts_with("vigil_inflight_requests "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no vigil_inflight_requests in /metrics:\n{body}"));
        if in_flight == 0.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{in_flight} requests still in flight after clients left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let responses = exchange(&mut client, vec![ok(search_config()), segment_message(0, &speech)]).await.unwrap();
    assert!(!final_result(&responses).transcript.is_empty());

    // Every query is counted once by how it ended: 20 refused, 2 timed out, 4 left, 1 answered.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&server, "vigil_voice_search_queries_total", "").await < 27.0 {
        assert!(std::time::Instant::now() < deadline, "not every query was counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&server, "vigil_voice_search_queries_total", "").await, 27.0);
    assert_eq!(metric(&server, "vigil_voice_search_queries_total", "status=\"InvalidArgument\"").await, 20.0);
    assert_eq!(metric(&server, "vigil_voice_search_queries_total", "status=\"DeadlineExceeded\"").await, 2.0);
    assert_eq!(metric(&server, "vigil_voice_search_queries_total", "status=\"Ok\"").await, 1.0);

    // Queries that failed once open are logged with their status (11 refused mid-stream, the
    // idle one with the segment it recognised); those refused before opening, and those whose
    // client left, are not; the answered one logs both stages.
    let mut asr = Vec::new();
    let mut search = 0;
    while let Ok(Some(envelope)) = tokio::time::timeout(Duration::from_secs(2), records.recv()).await {
        let record = <PredictionRecord as prost::Message>::decode(envelope.payload.as_slice()).unwrap();
        match record.api.as_str() {
            "voice_search.asr" => asr.push(record),
            "voice_search.search" => search += 1,
            other => panic!("unexpected record of {other}"),
        }
    }
    let with = |status: RecordStatus| asr.iter().filter(|r| r.status == status as i32).collect::<Vec<_>>();
    assert_eq!(search, 1);
    assert_eq!(with(RecordStatus::Ok).len(), 1);
    let refused = with(RecordStatus::InvalidInput);
    assert_eq!(refused.len(), 11, "{refused:#?}");
    assert!(refused.iter().all(|r| r.error.starts_with("InvalidArgument: ")), "{refused:#?}");
    assert!(refused.iter().any(|r| r.error.contains("segment 2 arrived where 1 was due")), "{refused:#?}");
    // The query refused for its audio counts what it heard: the first segment's 5 s, not the
    // refused one's.
    let over = refused.iter().find(|r| r.error.contains("the query passed")).unwrap();
    let audio = over.features.iter().find(|f| f.name == "audio_seconds").unwrap().value;
    assert!((audio - 5.0).abs() < 1e-9, "audio_seconds {audio}");
    let idle = with(RecordStatus::Error);
    assert_eq!(idle.len(), 1, "{asr:#?}");
    assert!(idle[0].error.starts_with("DeadlineExceeded: no message for 600 ms"), "{}", idle[0].error);
    let heard = idle[0].output.as_ref().map(|o| o.text.as_str()).unwrap_or_default();
    assert!(!heard.is_empty(), "the idle query's record keeps what it recognised");
    assert_eq!(asr.len(), 13, "{asr:#?}");
    server.shutdown().await.unwrap();
}

/// A query whose deadline passes mid-recognition is ended by the server: its work stops with
/// it (no more decoder steps run for it, nothing outside the server's limits) and it is logged
/// as the recogniser's failure, as a unary request timed out is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_deadline_stops_its_recognition_and_is_logged_as_a_failure() {
    use vigil_proto::inference::ModelStatisticsRequest;
    use vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
    let models = voices::cloud_models();
    let (server, mut records) = server(config(&models)).await;
    let mut client = client(&server).await;
    let mut oip = GrpcInferenceServiceClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let mut decoder_steps = async || {
        let request = ModelStatisticsRequest { name: "moonshine-tiny-en-decoder".into(), ..Default::default() };
        let stats = oip.model_statistics(request).await.unwrap().into_inner().model_stats;
        stats.iter().map(|s| s.execution_count).sum::<u64>()
    };
    // A long query: 28 s of speech in one segment; its whole recognition first, for scale.
    let phrase = voices::say("a yoga mat and a water bottle for the living room", ADULT);
    let long: Vec<f32> = phrase.iter().cycle().take(28 * 16_000).copied().collect();
    let query = || vec![config_message(search_config()), segment_message(0, &long)];
    let before = decoder_steps().await;
    let started = std::time::Instant::now();
    exchange(&mut client, query()).await.expect("the whole query answered");
    let (whole, took) = (decoder_steps().await - before, started.elapsed());
    assert!(whole > 20, "{whole} decoder steps");
    for _ in 0..2 {
        records.recv().await.expect("the answered query's records");
    }
    // The same query with a deadline a tenth of the way in.
    let mut request = tonic::Request::new(tokio_stream::iter(query()));
    request.set_timeout((took / 10).max(Duration::from_millis(100)));
    let before = decoder_steps().await;
    let ended = match client.search(request).await {
        Ok(responses) => {
            let mut responses = responses.into_inner();
            loop {
                match responses.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("answered past its deadline"),
                    Err(status) => break status,
                }
            }
        }
        Err(status) => status,
    };
    assert!(matches!(ended.code(), Code::DeadlineExceeded | Code::Cancelled), "{ended:?}");
    let envelope = tokio::time::timeout(Duration::from_secs(10), records.recv()).await.expect("a record").unwrap();
    let record = <PredictionRecord as prost::Message>::decode(envelope.payload.as_slice()).unwrap();
    assert_eq!((record.api.as_str(), record.status), ("voice_search.asr", RecordStatus::Error as i32));
    assert!(record.error.starts_with("DeadlineExceeded"), "{}", record.error);
    // Its recognition stopped with it: long after, far fewer steps ran than a whole one takes.
    tokio::time::sleep(took).await;
    let cut = decoder_steps().await - before;
    assert!(cut < whole / 2, "{cut} decoder steps ran for the query cut short, {whole} for the whole one");
    server.shutdown().await.unwrap();
}

/// Copies `model`'s version 1 (every file) from the fetched models to `to/<model>/<version>`,
/// appearing at once as a watched repository expects.
fn install(models: &Path, model: &str, to: &Path, version: u64) {
    let staging = to.join(format!(".{model}-{version}.incoming"));
    std::fs::create_dir_all(&staging).unwrap();
    for file in std::fs::read_dir(models.join(model).join("1")).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), staging.join(file.file_name())).unwrap();
    }
    let toml = staging.join("model.toml");
    let text = std::fs::read_to_string(&toml).unwrap().replace("version = 1\n", &format!("version = {version}\n"));
    std::fs::write(&toml, text).unwrap();
    std::fs::create_dir_all(to.join(model)).unwrap();
    std::fs::rename(&staging, to.join(model).join(version.to_string())).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_recogniser_version_swaps_in_under_load_and_a_broken_one_leaves_it_serving() {
    let models = voices::cloud_models();
    let repository = tempfile::tempdir().unwrap();
    for model in ["moonshine-tiny-en-encoder", "moonshine-tiny-en-decoder"] {
        install(&models, model, repository.path(), 1);
    }
    let mut config = config(repository.path());
    config.models.watch_interval_ms = 100;
    let (server, _records) = server(config).await;
    let speech = voices::say("coffee grinder", ADULT);

    // Queries back to back on two streams while version 2 of the decoder arrives.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (addr, stop, speech) = (server.addr, stop.clone(), speech.clone());
        load.push(tokio::spawn(async move {
            let mut client = VoiceSearchClient::connect(format!("http://{addr}")).await.unwrap();
            let mut versions = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let messages = vec![config_message(search_config()), segment_message(0, &speech)];
                let responses = exchange(&mut client, messages).await.expect("no query fails during the swap");
                versions.push(final_result(&responses).model_version.clone());
            }
            versions
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    install(&models, "moonshine-tiny-en-decoder", repository.path(), 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while server.repository.get("moonshine-tiny-en-decoder", "").unwrap().config.version != 2 {
        assert!(std::time::Instant::now() < deadline, "version 2 did not load");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Version 3 is broken: it does not load, the index says why, version 2 keeps answering.
    let broken = repository.path().join(".broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(models.join("moonshine-tiny-en-decoder/1/model.toml"), broken.join("model.toml")).unwrap();
    let text = std::fs::read_to_string(broken.join("model.toml")).unwrap().replace("version = 1\n", "version = 3\n");
    std::fs::write(broken.join("model.toml"), text).unwrap();
    std::fs::write(broken.join("model.onnx"), b"not a model").unwrap();
    // Its tokenizer there (the files it requires), so the model itself is what fails.
    std::fs::copy(models.join("moonshine-tiny-en-decoder/1/tokenizer.bin"), broken.join("tokenizer.bin")).unwrap();
    std::fs::rename(&broken, repository.path().join("moonshine-tiny-en-decoder/3")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let index = server.repository.index();
        let reported = index.iter().any(|e| {
            e.name == "moonshine-tiny-en-decoder"
                && e.version == Some(3)
                && matches!(&e.state, vigil_inference::repository::VersionState::Unavailable(why) if why.contains("cannot load model"))
        });
        if reported {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the broken version was not reported: {index:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut versions = Vec::new();
    for task in load {
        versions.extend(task.await.unwrap());
    }
    assert!(versions.contains(&"1".to_string()) && versions.contains(&"2".to_string()), "{versions:?}");
    assert_eq!(versions.last().map(String::as_str), Some("2"), "version 2 still serves after the broken 3");
    assert_eq!(server.repository.get("moonshine-tiny-en-decoder", "").unwrap().config.version, 2);
    server.shutdown().await.unwrap();
}

const DECODER: &str = "moonshine-tiny-en-decoder";

/// A repository under `dir` with the encoder and two versions of the decoder (the same model),
/// both registered in a registry beside it; the registry's URL.
async fn two_decoder_versions(dir: &Path) -> (std::path::PathBuf, vigil_store::SqliteStore, String) {
    use vigil_store::{ModelVersionRow, PredictionStore, RegistryStore, SqliteStore};
    let models = voices::cloud_models();
    let repository = dir.join("models");
    install(&models, "moonshine-tiny-en-encoder", &repository, 1);
    for version in [1, 2] {
        install(&models, DECODER, &repository, version);
    }
    let url = format!("sqlite://{}", dir.join("registry.db").display());
    let store = SqliteStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let digest = vigil_store::registry::sha256_file(&repository.join(DECODER).join("1/model.onnx")).unwrap();
    let now = chrono::Utc::now();
    for version in ["1", "2"] {
        let row = ModelVersionRow {
            model_name: DECODER.into(),
            version: version.into(),
            artifact_sha256: digest.clone(),
            artifact_uri: String::new(),
            training_data: String::new(),
            metrics: serde_json::json!({}),
            stage: "candidate".into(),
            registered_by: "anna".into(),
            registered_at: now,
            stage_changed_at: now,
        };
        store.register_version(&row, "").await.unwrap();
    }
    (repository, store, url)
}

/// A deployment of the decoder with version 2 primary and version 1 the candidate, in `mode`,
/// over every request or session.
fn decoder_deployment(id: &str, mode: &str) -> vigil_store::DeploymentRow {
    vigil_store::DeploymentRow {
        model_name: DECODER.into(),
        deployment_id: id.into(),
        primary_version: "2".into(),
        candidate_version: Some("1".into()),
        mode: mode.into(),
        share: 1.0,
        updated_by: "ben".into(),
        updated_at: chrono::Utc::now(),
        policy: "full".into(),
        accept_below: None,
        reject_at: None,
    }
}

/// A shadow deployment of the recogniser hears every answered query again off its path, with
/// its candidate version; the client gets the primary's answer, and the shadow's recognition is
/// logged as a shadow record of the same trace, for the monitor to compare the transcripts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_recogniser_hears_answered_queries_again_and_is_logged_beside_them() {
    use vigil_proto::vigil::v1::Variant;
    use vigil_store::{Change, DeploymentStore};
    let dir = tempfile::tempdir().unwrap();
    let (repository, store, url) = two_decoder_versions(dir.path()).await;
    let mut config = config(&repository);
    config.models.load_all_versions = true;
    config.deployments.database_url = url;
    config.deployments.poll_interval_ms = 100;
    let (server, mut records) = server(config).await;
    let mut client = client(&server).await;
    let shadow = decoder_deployment("asr-shadow", "shadow");
    store.set_deployment(&shadow, &Change { actor: "ben", reason: "", at: chrono::Utc::now() }).await.unwrap();
    let speech = voices::say("yoga mat", ADULT);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (answered, primary, shadowed) = 'followed: loop {
        assert!(std::time::Instant::now() < deadline, "no shadow record: the deployment was not followed");
        let messages = vec![config_message(search_config()), segment_message(0, &speech)];
        let answered = final_result(&exchange(&mut client, messages).await.unwrap()).clone();
        let mut asr = Vec::new();
        while let Ok(Some(envelope)) = tokio::time::timeout(Duration::from_secs(2), records.recv()).await {
            let record = <PredictionRecord as prost::Message>::decode(envelope.payload.as_slice()).unwrap();
            if record.api == "voice_search.asr" && record.trace_id == answered.trace_id {
                asr.push(record);
            }
            if asr.len() == 2 {
                break;
            }
        }
        if let [primary, shadowed] = &asr[..] {
            break 'followed (answered, primary.clone(), shadowed.clone());
        }
    };
    // The client's answer and the primary's record are version 2's; the shadow's is version 1's.
    assert_eq!(answered.model_version, "2");
    let of = |r: &PredictionRecord| (r.model_version.clone(), r.variant, r.deployment_id.clone(), r.status);
    assert_eq!(of(&primary), ("2".into(), Variant::Primary as i32, "asr-shadow".into(), RecordStatus::Ok as i32));
    assert_eq!(of(&shadowed), ("1".into(), Variant::Shadow as i32, "asr-shadow".into(), RecordStatus::Ok as i32));
    assert_eq!(primary.prediction_id, answered.transcript_id);
    assert_ne!(shadowed.prediction_id, primary.prediction_id, "a record of its own");
    // The same model heard the same audio: the same transcript, recognised again (not copied:
    // its own compute time), of the query's whole audio.
    let text = |r: &PredictionRecord| r.output.as_ref().map(|o| o.text.clone()).unwrap_or_default();
    assert!(!text(&primary).is_empty());
    assert_eq!(text(&shadowed), text(&primary));
    assert_eq!(text(&primary), answered.transcript);
    assert!(shadowed.compute_time_us > 0);
    let feature = |r: &PredictionRecord, name: &str| r.features.iter().find(|f| f.name == name).unwrap().value;
    assert_eq!(feature(&shadowed, "audio_seconds"), feature(&primary, "audio_seconds"));
    assert_eq!(feature(&shadowed, "tokens"), feature(&primary, "tokens"));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_recogniser_answers_the_sessions_it_is_given_and_its_records_say_so() {
    use vigil_store::{Change, DeploymentRow, DeploymentStore};
    let dir = tempfile::tempdir().unwrap();
    let (repository, store, url) = two_decoder_versions(dir.path()).await;
    let mut config = config(&repository);
    config.models.load_all_versions = true;
    config.deployments.database_url = url;
    config.deployments.poll_interval_ms = 100;
    let (server, mut records) = server(config).await;
    let client = client(&server).await;
    let speech = voices::say("yoga mat", ADULT);
    let search = |session: &str| {
        let mut client = client.clone();
        let messages = vec![
            config_message(SearchConfig { session_id: session.into(), ..search_config() }),
            segment_message(0, &speech),
        ];
        async move { final_result(&exchange(&mut client, messages).await.unwrap()).clone() }
    };
    // Every session on version 1 as a canary of version 2 (the newest, which answers until the
    // deployment is followed).
    let canary = decoder_deployment("asr-canary", "canary");
    let change = Change { actor: "ben", reason: "", at: chrono::Utc::now() };
    store.set_deployment(&canary, &change).await.unwrap();
    let mut answered = None;
    for _ in 0..100 {
        let result = search("s-1").await;
        if result.model_version == "1" {
            answered = Some(result);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let result = answered.expect("the canary never answered");
    for session in ["s-2", "s-3"] {
        assert_eq!(search(session).await.model_version, "1");
    }
    let asr = loop {
        let envelope = tokio::time::timeout(Duration::from_secs(5), records.recv()).await.unwrap().unwrap();
        let record = <PredictionRecord as prost::Message>::decode(envelope.payload.as_slice()).unwrap();
        if record.trace_id == result.trace_id && record.api == "voice_search.asr" {
            break record;
        }
    };
    assert_eq!((asr.model_version.as_str(), asr.deployment_id.as_str()), ("1", "asr-canary"));
    assert_eq!(asr.variant, vigil_proto::vigil::v1::Variant::Canary as i32);

    // A query open when the deployment moves its sessions back to version 2 is heard to its end
    // by the version that heard its first segment.
    let (tx, rx) = mpsc::channel(4);
    let mut open_query = client.clone();
    tx.send(config_message(SearchConfig { session_id: "s-4".into(), ..search_config() })).await.unwrap();
    tx.send(segment_message(0, &speech)).await.unwrap();
    let mut responses = open_query.search(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let first = responses.message().await.unwrap().expect("the first segment's transcript");
    assert!(matches!(first.message, Some(search_response::Message::Segment(_))), "{first:?}");
    let single = DeploymentRow { candidate_version: None, mode: "single".into(), share: 0.0, ..canary };
    store.set_deployment(&single, &Change { at: chrono::Utc::now(), ..change }).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while search("s-5").await.model_version != "2" {
        assert!(std::time::Instant::now() < deadline, "the deployment's move to version 2 was not followed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tx.send(segment_message(1, &speech)).await.unwrap();
    drop(tx);
    let mut rest = Vec::new();
    while let Some(r) = responses.message().await.unwrap() {
        rest.push(r);
    }
    let result = final_result(&rest);
    assert_eq!(result.model_version, "1", "a query's segments are heard by one version: {result:?}");
    server.shutdown().await.unwrap();
}

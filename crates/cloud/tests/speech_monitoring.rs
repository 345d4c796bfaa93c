//! The seed's speech drift end to end, through the whole logging and monitoring path: spoken
//! queries (espeak-ng) go through the device-side VAD and vigil-cloud over gRPC; every stage's
//! record (VAD, recognition, search) flows through the logger's pipeline into Postgres; the
//! monitor rolls them up, its drift alarm on the voice feature fires when higher (younger)
//! voices arrive and stays quiet on adult voices, and with what was said submitted as labels it
//! reports the word error rate per window.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tonic::transport::Channel;
use vigil_cloud::CloudConfig;
use vigil_logbus::Emitter;
use vigil_logger::{BatchSettings, LoggerStats};
use vigil_monitor::views::Scope;
use vigil_monitor::{Catalog, MonitorConfig, Views};
use vigil_proto::vigil::v1::monitoring_client::MonitoringClient;
use vigil_proto::vigil::v1::voice_search_client::VoiceSearchClient;
use vigil_proto::vigil::v1::{
    GetDriftRequest, LabelEvent, SearchConfig, SearchRequest, SearchResult, SpeechSegment, SubmitLabelsRequest,
    VadReport, search_request, search_response,
};
use vigil_serving::records::RecordEmitter;
use vigil_speech::audio::{self, SAMPLES_PER_MS};
use vigil_speech::vad::{self, VadParams, VadStream};
use vigil_speech::{LocalModel, text};
use vigil_store::testing::TestDatabase;
use vigil_store::{AlertStore as _, PgStore, PredictionStore};
use vigil_testkit::speech::{self as voices, ADULT};

const DECODER: &str = "moonshine-tiny-en-decoder";

/// One spoken query as the device sends it: its VAD's segments, then its VAD report.
async fn device_messages(vad: &LocalModel, samples: &[f32], params: VadParams) -> Vec<SearchRequest> {
    let started = std::time::Instant::now();
    let probabilities = VadStream::new(vad).probabilities(samples).await.unwrap();
    let spans = vad::speech_spans(&probabilities, samples.len(), params);
    let vad_time = started.elapsed();
    let config =
        SearchConfig { language: "en".into(), sample_rate: 16_000, device_id: "phone-1".into(), ..Default::default() };
    let mut messages = vec![SearchRequest { message: Some(search_request::Message::Config(config)) }];
    for (i, span) in spans.iter().enumerate() {
        let segment = SpeechSegment {
            sequence: i as u64,
            pcm16: audio::f32_to_pcm16(&samples[span.clone()]),
            start_ms: (span.start / SAMPLES_PER_MS) as u64,
            end_ms: (span.end / SAMPLES_PER_MS) as u64,
        };
        messages.push(SearchRequest { message: Some(search_request::Message::Segment(segment)) });
    }
    let report = VadReport {
        model_name: vad.name().into(),
        model_version: vad.version().to_string(),
        recorded_ms: (samples.len() / SAMPLES_PER_MS) as u64,
        speech_ms: spans.iter().map(|s| (s.len() / SAMPLES_PER_MS) as u64).sum(),
        segments: spans.len() as u32,
        threshold: params.threshold,
        min_speech_ms: params.min_speech_ms,
        min_silence_ms: params.min_silence_ms,
        mean_speech_probability: vad::mean_probability_in(&probabilities, &spans),
        compute_time_us: vad_time.as_micros() as u64,
    };
    messages.push(SearchRequest { message: Some(search_request::Message::VadReport(report)) });
    messages
}

async fn search(client: &mut VoiceSearchClient<Channel>, messages: Vec<SearchRequest>) -> SearchResult {
    let mut responses = client.search(tokio_stream::iter(messages)).await.unwrap().into_inner();
    let mut result = None;
    while let Some(r) = responses.message().await.unwrap() {
        if let Some(search_response::Message::Result(r)) = r.message {
            result = Some(r);
        }
    }
    result.expect("the stream ended with a result")
}

/// Waits for the next whole second (plus a margin) and returns it: phases start on rollup
/// window boundaries, so no 1 s window holds two phases.
async fn next_second() -> DateTime<Utc> {
    let now = Utc::now();
    let next = DateTime::from_timestamp(now.timestamp() + 1, 0).unwrap();
    tokio::time::sleep((next - now).to_std().unwrap() + Duration::from_millis(20)).await;
    next
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: 0 }
}

/// One query as the test knows it: what was said, what was heard, the recognition record's id.
struct Spoken {
    said: String,
    result: SearchResult,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_voices_fire_the_pitch_drift_alarm_and_the_monitor_reports_word_error_rate_per_window() {
    let models = voices::cloud_models();
    let db = TestDatabase::create();
    let store = PgStore::connect_lazy(&db.url(), 4).unwrap();
    store.migrate().await.unwrap();

    // Records: the server's emitter -> in-process bus -> the logger's pipeline -> Postgres.
    let (sink, receiver) = vigil_logbus::in_process::channel(4096);
    let (emitter, _emitting) = Emitter::start(sink, 4096, 8);
    let stats = Arc::new(LoggerStats::default());
    let batch = BatchSettings { max_wait_ms: 50, ..Default::default() };
    tokio::spawn(vigil_logger::embedded::run(receiver, store.clone(), batch, stats.clone()));
    let mut config = CloudConfig { model_repository: models.clone(), ..CloudConfig::default() };
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.metrics.enabled = false;
    config.models.watch_interval_ms = 0;
    config.voice_search.catalog = voices::repo_root().join("deploy/catalog/products.csv");
    let server = vigil_cloud::start(config, false, Some(RecordEmitter::new(emitter, "cloud-1"))).await.unwrap();
    let mut client = VoiceSearchClient::connect(format!("http://{}", server.addr)).await.unwrap();

    // Phase 0 and 1: adults, different phrases; phase 2: half young; phase 3: all young; phase
    // 4: phase 0 again, from a device whose VAD clips (a high threshold, short pauses end a
    // segment, no padding). Every clip is synthesised first, so each phase takes only the
    // service's time.
    let young = voices::Voice { name: "en-us+m3", words_per_minute: 165, pitch: 95 };
    let clipping = VadParams {
        threshold: 0.8,
        negative_threshold: 0.75,
        min_speech_ms: 60,
        min_silence_ms: 40,
        speech_pad_ms: 0,
        max_speech_ms: 0,
    };
    let queries = voices::queries();
    let (first, second) = queries.split_at(queries.len() / 2);
    let adult = |q: &voices::Query| (q.text.clone(), ADULT, VadParams::default());
    let phases: Vec<Vec<(String, voices::Voice, VadParams)>> = vec![
        first.iter().map(adult).collect(),
        second.iter().map(adult).collect(),
        queries
            .iter()
            .enumerate()
            .map(|(i, q)| (q.text.clone(), if i % 2 == 0 { young } else { ADULT }, VadParams::default()))
            .collect(),
        queries.iter().map(|q| (q.text.clone(), young, VadParams::default())).collect(),
        first.iter().map(|q| (q.text.clone(), ADULT, clipping)).collect(),
    ];
    let vad = LocalModel::load(&models.join("silero-vad/1"), 1).unwrap();
    let mut device = Vec::new();
    for phase in &phases {
        let mut messages = Vec::new();
        for (said, voice, params) in phase {
            // A recording: a second of room noise floor before and after the words.
            let recording = [voices::silence(1000), voices::say(said, *voice), voices::silence(1000)].concat();
            messages.push((said.clone(), device_messages(&vad, &recording, *params).await));
        }
        device.push(messages);
    }
    let mut bounds = vec![next_second().await];
    let mut spoken: Vec<Vec<Spoken>> = Vec::new();
    for phase in device {
        let mut done = Vec::new();
        for (said, messages) in phase {
            done.push(Spoken { said, result: search(&mut client, messages).await });
        }
        spoken.push(done);
        bounds.push(next_second().await);
    }
    let total: usize = spoken.iter().map(Vec::len).sum();

    // Three records per query (vad, asr, search) reach Postgres.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while vigil_logger::pipeline::LoggerStats::get(&stats.inserted_predictions) < 3 * total as u64 {
        assert!(std::time::Instant::now() < deadline, "the logger stored {:?} of {}", stats, 3 * total);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The monitor: rollups every 100 ms at 1 s and 1 min; its APIs over gRPC.
    let monitor_config: MonitorConfig = toml::from_str(&format!(
        r#"
        models = "{models}"
        [rollups]
        resolutions = [1, 60]
        poll = "100ms"
        "#,
        models = models.display(),
    ))
    .unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let monitor_addr = grpc.local_addr().unwrap();
    let dashboard_addr = http.local_addr().unwrap();
    let monitor = vigil_monitor::start(store.clone(), monitor_config.clone(), grpc, http).await.unwrap();
    let mut monitoring = MonitoringClient::connect(format!("http://{monitor_addr}")).await.unwrap();

    // A transcriber labels each recognition with what was said.
    let labels = spoken
        .iter()
        .flatten()
        .map(|s| LabelEvent {
            schema_version: 1,
            label_id: uuid::Uuid::now_v7().to_string(),
            prediction_id: s.result.transcript_id.clone(),
            label: s.said.clone(),
            time: Some(std::time::SystemTime::now().into()),
            source: "transcriber".into(),
        })
        .collect();
    let submitted = monitoring.submit_labels(SubmitLabelsRequest { labels }).await.unwrap().into_inner();
    assert_eq!(submitted.accepted as usize, total, "{:?}", submitted.rejected);

    let views = Views::new(store.clone(), Arc::new(Catalog::load(&models).unwrap()), Arc::new(monitor_config.clone()));
    let scope = |model: &str| Scope { model: model.into(), version: None, variant: None };
    let (start, end) = (bounds[0], bounds[5]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rolled = views.total(&scope(DECODER), start, end).await.unwrap().count;
        if rolled == total as u64 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "rollups hold {rolled} of {total} recognitions");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every stage is logged once per query, under its own model, and the stages join by trace.
    for (model, stage) in [("silero-vad", "vad"), (DECODER, "asr"), ("catalog-search", "search")] {
        let window = views.total(&scope(model), start, end).await.unwrap();
        assert_eq!(window.stages.get(stage).copied(), Some(total as u64), "{model}: {:?}", window.stages);
        assert_eq!(window.stages.len(), 1, "{model}: {:?}", window.stages);
    }
    // The dashboard lists each model under its stage and charts the recogniser's word error
    // rate from the labels.
    let get = |path: String| async move {
        let url = format!("http://{dashboard_addr}{path}");
        reqwest::get(&url).await.unwrap().json::<serde_json::Value>().await.unwrap()
    };
    let listed = get("/api/models".into()).await;
    for (model, stage) in [("silero-vad", "vad"), (DECODER, "asr"), ("catalog-search", "search")] {
        let entry = listed["models"].as_array().unwrap().iter().find(|m| m["model"] == model).unwrap();
        assert_eq!(entry["stages"], serde_json::json!([stage]), "{listed}");
    }
    let dashboard = get(format!("/api/dashboard?model={DECODER}&range=600")).await;
    assert_eq!(dashboard["stages"]["asr"], total, "{}", dashboard["stages"]);
    let words: u64 =
        dashboard["accuracy"].as_array().unwrap().iter().map(|a| a["reference_words"].as_u64().unwrap()).sum();
    assert!(words >= total as u64 * 2, "every query's words are counted: {words}");
    let vad_window = views.total(&scope("silero-vad"), start, end).await.unwrap();
    let speech_ratio = &vad_window.features["speech_ratio"];
    let mean_ratio = speech_ratio.sum / speech_ratio.count as f64;
    assert!(mean_ratio > 0.3 && mean_ratio < 1.0, "the VAD sent part of each recording: {mean_ratio}");

    // The drift alarm: the voice feature of the current window against phase 0's. Evaluated
    // at the end of phase 1 (adults) and of phase 3 (young), as the monitor's loop does, with
    // its transitions persisted.
    let rule_over = |name: &str, phase: usize| {
        format!(
            r#"
            [[alerting.rules]]
            name = "{name}"
            metric = "drift.pitch_hz.detected"
            model = "{DECODER}"
            window = "{window}s"
            comparator = "=="
            threshold = 1
            baseline_since = "{b0}"
            baseline_until = "{b1}"
            "#,
            window = (bounds[phase + 1] - bounds[phase]).num_seconds(),
            b0 = bounds[0].to_rfc3339(),
            b1 = bounds[1].to_rfc3339(),
        )
    };
    // And the shipped form for models without a training reference: the same window shifted
    // back (here by three phases, onto the adult phases 0 and 1).
    let shifted = format!(
        r#"
        [[alerting.rules]]
        name = "young-voices-vs-earlier"
        metric = "drift.pitch_hz.detected"
        model = "{DECODER}"
        window = "{window}s"
        comparator = "=="
        threshold = 1
        baseline_offset = "{offset}s"
        "#,
        window = (bounds[4] - bounds[3]).num_seconds(),
        offset = (bounds[3] - bounds[0]).num_seconds(),
    );
    // The device's VAD: phase 4's segment lengths against phase 0's (same phrases, same voice).
    let vad_rule = format!(
        r#"
        [[alerting.rules]]
        name = "clipping-vad"
        metric = "drift.segment_seconds.detected"
        model = "silero-vad"
        window = "{window}s"
        comparator = "=="
        threshold = 1
        baseline_since = "{b0}"
        baseline_until = "{b1}"
        "#,
        window = (bounds[5] - bounds[4]).num_seconds(),
        b0 = bounds[0].to_rfc3339(),
        b1 = bounds[1].to_rfc3339(),
    );
    let rules: MonitorConfig =
        toml::from_str(&(rule_over("adult-voices", 1) + &rule_over("young-voices", 3) + &shifted + &vad_rule)).unwrap();
    let rules = rules.rules().unwrap();
    let (_, metrics) = vigil_monitor::telemetry::registry();
    assert!(bounds[3] - bounds[0] >= bounds[4] - bounds[3], "the shifted baseline lies before the young window");
    // Each group at the end of its phase; a round resolves the alarms of rules it was not
    // given, so each round's states are read before the next.
    let mut states = std::collections::HashMap::new();
    for (group, now) in [(&rules[..1], bounds[2]), (&rules[1..3], bounds[4]), (&rules[3..], bounds[5])] {
        vigil_monitor::alarms::evaluate_all(&views, group, now, &metrics, &mut Default::default()).await.unwrap();
        for alert in store.load_alerts().await.unwrap() {
            if group.iter().any(|r| r.name == alert.rule) {
                states.insert(alert.rule.clone(), (alert.state.clone(), alert.value));
            }
        }
    }
    let state = |rule: &str| states.get(rule).cloned();
    assert_eq!(state("young-voices"), Some(("firing".into(), Some(1.0))), "{states:#?}");
    assert_eq!(state("young-voices-vs-earlier"), Some(("firing".into(), Some(1.0))), "{states:#?}");
    assert_eq!(state("clipping-vad"), Some(("firing".into(), Some(1.0))), "{states:#?}");
    assert!(
        matches!(state("adult-voices"), None | Some((_, Some(0.0)))),
        "adult voices against adult voices must not drift: {states:#?}"
    );

    // The same through the monitor's API: phase 3 against phase 0.
    let drift = monitoring
        .get_drift(GetDriftRequest {
            scope: Some(vigil_proto::vigil::v1::Scope { model_name: DECODER.into(), ..Default::default() }),
            since: Some(timestamp(bounds[3])),
            until: Some(timestamp(bounds[4])),
            baseline_since: Some(timestamp(bounds[0])),
            baseline_until: Some(timestamp(bounds[1])),
        })
        .await
        .unwrap()
        .into_inner();
    let pitch = drift.features.iter().find(|f| f.feature == "pitch_hz").expect("pitch_hz is tested");
    assert!(pitch.drifted, "{pitch:?}");

    // Word error rate per window from the labels, against the rate computed here from the same
    // transcripts: the monitor's 1 s windows add up to each phase's.
    let drift = monitoring
        .get_drift(GetDriftRequest {
            scope: Some(vigil_proto::vigil::v1::Scope { model_name: DECODER.into(), ..Default::default() }),
            since: Some(timestamp(start)),
            until: Some(timestamp(end)),
            baseline_since: Some(timestamp(bounds[0])),
            baseline_until: Some(timestamp(bounds[1])),
        })
        .await
        .unwrap()
        .into_inner();
    let mut report =
        String::from("phase | queries | mean pitch Hz | VAD segment s | WER here | WER from the monitor\n");
    for (p, phase) in spoken.iter().enumerate() {
        let (mut errors, mut words) = (0, 0);
        for s in phase {
            let (said, heard) = (text::normalise(&s.said), text::normalise(&s.result.transcript));
            let said: Vec<&str> = said.split_whitespace().collect();
            errors += text::word_errors(&said, &heard.split_whitespace().collect::<Vec<_>>());
            words += said.len();
        }
        let here = errors as f64 / words as f64;
        let windows: Vec<_> = drift
            .accuracy
            .iter()
            .filter(|w| {
                let t = w.start.as_ref().unwrap().seconds;
                t >= bounds[p].timestamp() && t < bounds[p + 1].timestamp()
            })
            .collect();
        let monitor_words: u64 = windows.iter().map(|w| w.reference_words).sum();
        let monitor_errors: f64 = windows.iter().map(|w| w.word_error_rate * w.reference_words as f64).sum();
        let from_monitor = monitor_errors / monitor_words as f64;
        let window = views.total(&scope(DECODER), bounds[p], bounds[p + 1]).await.unwrap();
        let pitch = &window.features["pitch_hz"];
        let vad_window = views.total(&scope("silero-vad"), bounds[p], bounds[p + 1]).await.unwrap();
        let segment = &vad_window.features["segment_seconds"];
        report += &format!(
            "{p} | {} | {:.0} | {:.2} | {here:.3} | {from_monitor:.3}\n",
            phase.len(),
            pitch.sum / pitch.count as f64,
            segment.sum / segment.count as f64
        );
        assert_eq!(monitor_words as usize, words, "every labelled word counted once\n{report}");
        assert!((from_monitor - here).abs() < 1e-9, "{report}");
        assert_eq!(windows.iter().map(|w| w.labeled).sum::<u64>() as usize, phase.len(), "{report}");
    }
    println!("{report}");

    monitor.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

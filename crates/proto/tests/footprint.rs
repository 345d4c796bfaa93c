//! The decoded-size bound against what prost really allocates: each message is decoded under
//! a counting allocator, and its peak must stay within the bound read from its wire form.

use prost::{Message, Name};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use vigil_proto::footprint::{Unbounded, contracts, decoded_bound};
use vigil_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use vigil_proto::inference::{InferParameter, InferTensorContents, ModelInferRequest, infer_parameter};
use vigil_proto::vigil::v1::InspectRequest;

/// Counts the bytes this thread has allocated and their peak.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grew(bytes: usize) {
    let live = LIVE.with(|l| {
        l.set(l.get() + bytes);
        l.get()
    });
    PEAK.with(|p| p.set(p.get().max(live)));
}

fn shrank(bytes: usize) {
    LIVE.with(|l| l.set(l.get().saturating_sub(bytes)));
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The old and the new block may both be live while the contents move.
        grew(new_size);
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        shrank(layout.size());
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The peak bytes allocated while `wire` decodes as `M` (kept until the end, as a server keeps
/// the request while it handles it). Decoded from a shared buffer, as tonic's is: a `Bytes`
/// field takes a view of it, a `Vec<u8>` or `String` field a copy.
fn decoding_peak<M: Message + Default>(wire: &[u8]) -> usize {
    let wire = bytes::Bytes::copy_from_slice(wire);
    let before = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(before));
    let decoded = M::decode(wire);
    let peak = PEAK.with(Cell::get) - before;
    drop(decoded);
    peak
}

/// Checks the bound holds, and that it is not so loose that honest messages pay for nothing:
/// within `slack` times the peak, plus a page.
fn check<M: Message + Default + Name>(case: &str, message: &M, slack: usize) -> (usize, usize) {
    let wire = message.encode_to_vec();
    let bound = decoded_bound(&M::full_name(), &wire).expect("the contracts describe the message");
    let peak = decoding_peak::<M>(&wire);
    println!("{case}: {} wire bytes, {peak} allocated at the peak, bound {bound}", wire.len());
    assert!(peak <= bound, "{case}: decoding allocated {peak} bytes, over the bound of {bound}");
    assert!(
        bound <= slack.saturating_mul(peak).saturating_add(4096),
        "{case}: the bound {bound} is over {slack}x the {peak} bytes decoding took"
    );
    (wire.len(), bound)
}

fn tensor(name: &str) -> InferInputTensor {
    InferInputTensor { name: name.into(), datatype: "INT64".into(), shape: vec![1, 3], ..Default::default() }
}

#[test]
fn repeated_empty_submessages_are_bounded() {
    let request = ModelInferRequest { inputs: vec![InferInputTensor::default(); 100_000], ..Default::default() };
    let (wire, bound) = check("100k empty inputs", &request, 4);
    // Two bytes each on the wire, a whole struct each decoded.
    assert!(bound > 50 * wire, "{bound} for {wire}");
}

#[test]
fn empty_bytes_and_zero_integers_are_bounded() {
    let contents = InferTensorContents { bytes_contents: vec![Vec::new(); 200_000], ..Default::default() };
    let request = ModelInferRequest {
        inputs: vec![InferInputTensor { contents: Some(contents), ..tensor("text") }],
        ..Default::default()
    };
    check("200k empty strings", &request, 4);

    let contents = InferTensorContents { int64_contents: vec![0; 500_000], ..Default::default() };
    let request = ModelInferRequest {
        inputs: vec![InferInputTensor { contents: Some(contents), ..tensor("ids") }],
        ..Default::default()
    };
    check("500k packed zeros", &request, 4);

    let contents = InferTensorContents { bool_contents: vec![true; 100_000], ..Default::default() };
    let request = ModelInferRequest {
        inputs: vec![InferInputTensor { contents: Some(contents), ..tensor("mask") }],
        ..Default::default()
    };
    check("100k packed bools", &request, 4);
}

#[test]
fn unpacked_integers_are_bounded() {
    // Field 3 of InferTensorContents, each value with its own tag (wire type 0), as some
    // encoders send repeated scalars.
    let mut contents = Vec::new();
    for value in 0..100_000u32 {
        contents.push(3 << 3);
        prost::encoding::encode_varint(u64::from(value % 100), &mut contents);
    }
    let mut tensor_wire = tensor("ids").encode_to_vec();
    tensor_wire.push((5 << 3) | 2);
    prost::encoding::encode_varint(contents.len() as u64, &mut tensor_wire);
    tensor_wire.extend_from_slice(&contents);
    let mut wire = vec![(5 << 3) | 2];
    prost::encoding::encode_varint(tensor_wire.len() as u64, &mut wire);
    wire.extend_from_slice(&tensor_wire);
    let name = ModelInferRequest::full_name();
    let bound = decoded_bound(&name, &wire).unwrap();
    let peak = decoding_peak::<ModelInferRequest>(&wire);
    assert!(
        ModelInferRequest::decode(&wire[..]).unwrap().inputs[0].contents.as_ref().unwrap().int64_contents.len()
            == 100_000
    );
    assert!(peak <= bound && bound <= 4 * peak + 4096, "peak {peak}, bound {bound}");
}

#[test]
fn maps_are_bounded() {
    let parameters: HashMap<String, InferParameter> = (0..50_000)
        .map(|i| {
            (
                format!("k{i}"),
                InferParameter { parameter_choice: Some(infer_parameter::ParameterChoice::Int64Param(i)) },
            )
        })
        .collect();
    check("50k parameters", &ModelInferRequest { parameters, ..Default::default() }, 6);

    let outputs = (0..20_000)
        .map(|i| InferRequestedOutputTensor {
            name: format!("out{i}"),
            parameters: [("binary_data".to_string(), InferParameter::default())].into(),
        })
        .collect();
    check("20k outputs with parameters", &ModelInferRequest { outputs, ..Default::default() }, 6);
}

#[test]
fn honest_requests_are_bounded_near_their_wire_size() {
    // The edge's request: one image tensor as raw contents. Its decoded bound stays within its
    // wire size plus a little, so the memory budget's 3x charge covers it with nothing added.
    let raw = ModelInferRequest {
        model_name: "scratch-detector".into(),
        inputs: vec![InferInputTensor {
            name: "image".into(),
            datatype: "FP32".into(),
            shape: vec![1, 1, 128, 128],
            ..Default::default()
        }],
        raw_input_contents: vec![vec![7u8; 65_536].into()],
        ..Default::default()
    };
    // Raw contents are views of the received buffer, but the schema does not say which bytes
    // fields are views: the bound counts them as copies (no slack asked).
    let (wire, bound) = check("raw 64 KiB", &raw, usize::MAX);
    assert!(bound < wire + 4096, "{bound} for {wire}");

    let contents = InferTensorContents { fp32_contents: vec![0.5; 16_384], ..Default::default() };
    let typed = ModelInferRequest {
        model_name: "scratch-detector".into(),
        inputs: vec![InferInputTensor { contents: Some(contents), ..tensor("image") }],
        ..Default::default()
    };
    let (wire, bound) = check("typed FP32", &typed, 4);
    assert!(bound <= 3 * wire + 4096, "{bound} for {wire}");

    let inspect = InspectRequest { image: vec![1; 30_000], station_id: "line-3".into(), ..Default::default() };
    let (wire, bound) = check("inspect", &inspect, 4);
    assert!(bound < wire + 4096, "{bound} for {wire}");
}

#[test]
fn an_unknown_group_does_not_hide_what_follows() {
    // Field 99 as a group holding a varint, skipped by prost without allocating; then 10k
    // empty inputs, which the bound must still count.
    let mut wire = Vec::new();
    prost::encoding::encode_key(99, prost::encoding::WireType::StartGroup, &mut wire);
    prost::encoding::encode_key(1, prost::encoding::WireType::Varint, &mut wire);
    wire.push(5);
    prost::encoding::encode_key(99, prost::encoding::WireType::EndGroup, &mut wire);
    for _ in 0..10_000 {
        wire.extend_from_slice(&[(5 << 3) | 2, 0]);
    }
    let decoded = ModelInferRequest::decode(&wire[..]).expect("prost skips the group");
    assert_eq!(decoded.inputs.len(), 10_000);
    drop(decoded);
    let bound = decoded_bound(&ModelInferRequest::full_name(), &wire).unwrap();
    let peak = decoding_peak::<ModelInferRequest>(&wire);
    assert!(peak <= bound, "peak {peak}, bound {bound}");
}

#[test]
fn malformed_messages_have_no_bound_and_prost_refuses_them_too() {
    let name = ModelInferRequest::full_name();
    let request = ModelInferRequest { inputs: vec![InferInputTensor::default(); 1000], ..Default::default() };
    let wire = request.encode_to_vec();
    assert!(decoded_bound(&name, &wire).is_ok());
    let malformed = |case: &str, wire: &[u8]| {
        let bound = decoded_bound(&name, wire);
        assert!(matches!(bound, Err(Unbounded::Malformed(_))), "{case}: {bound:?}");
        assert!(ModelInferRequest::decode(wire).is_err(), "{case}: prost refuses it too");
    };
    // A length running past the end.
    malformed("past the end", &[wire.as_slice(), &[(7 << 3) | 2, 0xff, 0x01]].concat());
    // A nested field whose length runs past its parent's end but not the whole message's:
    // prost decodes it to the end (here a million empty strings as typed contents of the
    // first input) before it finds the parent's length wrong.
    let strings: Vec<u8> = std::iter::repeat_n([(8 << 3) | 2, 0], 1_000_000).flatten().collect();
    let mut overrun = vec![(5 << 3) | 2, 5, (5 << 3) | 2];
    prost::encoding::encode_varint(strings.len() as u64, &mut overrun);
    overrun.extend_from_slice(&strings);
    malformed("a nested length past its parent's end", &overrun);
    let peak = decoding_peak::<ModelInferRequest>(&overrun);
    assert!(peak > 20 << 20, "prost decoded the overrun before refusing it: {peak} bytes");
    // A known field with another wire type, a group's end alone, a key cut short.
    malformed("wire type", &[(1 << 3), 1]);
    malformed("end group", &[(1 << 3) | 4]);
    malformed("key cut short", &[0x80]);
    assert_eq!(decoded_bound("inference.NoSuchMessage", &wire), Err(Unbounded::UnknownMessage));
}

#[test]
fn struct_bounds_cover_the_generated_structs() {
    fn covers<M: Name>(size: usize) {
        let bound = contracts().struct_bound(&M::full_name()).expect("described");
        assert!(size <= bound, "{}: {size} bytes, bound {bound}", M::full_name());
    }
    covers::<ModelInferRequest>(size_of::<ModelInferRequest>());
    covers::<vigil_proto::vigil::v1::SpeechSegment>(size_of::<vigil_proto::vigil::v1::SpeechSegment>());
    covers::<vigil_proto::vigil::v1::VadReport>(size_of::<vigil_proto::vigil::v1::VadReport>());
    covers::<InferInputTensor>(size_of::<InferInputTensor>());
    covers::<InferRequestedOutputTensor>(size_of::<InferRequestedOutputTensor>());
    covers::<InferTensorContents>(size_of::<InferTensorContents>());
    covers::<InferParameter>(size_of::<InferParameter>());
    covers::<InspectRequest>(size_of::<InspectRequest>());
    covers::<vigil_proto::vigil::v1::SearchRequest>(size_of::<vigil_proto::vigil::v1::SearchRequest>());
}

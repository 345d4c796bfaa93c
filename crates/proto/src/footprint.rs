//! How much memory a protobuf message may take once prost decodes it, bounded from its wire
//! form before it is decoded.
//!
//! A message's wire size says little about its decoded size: a packed `int64` of zeros takes
//! one byte on the wire and eight in a `Vec<i64>`, an empty submessage in a repeated field two
//! bytes on the wire and its whole struct in the `Vec`, an empty string two bytes and a
//! `String`. [`decoded_bound`] walks the message's fields with the schema of every contract
//! (read from [`crate::FILE_DESCRIPTOR_SET`]) and sums what decoding them allocates, counting
//! each growing `Vec` at three times its entries and each map at four, as their growth may
//! hold them: an upper bound, at the cost of one pass over the field tags. A message the walk
//! finds malformed is one prost refuses too, and is refused before it is decoded: prost would
//! decode a nested field whose length runs past its parent's end to the end of the whole
//! message first.

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorSet};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Bytes a `String`, `Vec<u8>` or `Bytes` field takes in its struct (`Bytes` is the largest).
const BYTES_FIELD: usize = 32;
/// Bytes a `Vec` field takes in its struct.
const VEC_FIELD: usize = 24;
/// Bytes a `HashMap` field takes in its struct.
const MAP_FIELD: usize = 48;
/// Bytes the allocator may spend beside each allocation of a string's or bytes' contents.
const ALLOCATION_OVERHEAD: usize = 32;
/// How many times its entries' size a growing `Vec` may hold: it doubles its capacity, and
/// while it does the old allocation is live beside the new one.
const VEC_GROWTH: usize = 3;
/// How many times its entries' size (and one control byte each) a growing map may hold: up
/// to 8/7 buckets per entry, doubled as it grows, and the old table beside the new one while
/// it does.
const MAP_GROWTH: usize = 4;
/// The capacity a `Vec` takes at its first push, in entries.
const VEC_FIRST_CAPACITY: usize = 4;
/// Deepest nesting prost decodes (its recursion limit).
const MAX_DEPTH: u32 = 100;

/// What one field's values decode into.
#[derive(Debug, Clone, Copy)]
enum Value {
    /// A number, bool or enum of `bytes` bytes, sent as varints or fixed-width values.
    Scalar { bytes: usize, wire: Width },
    /// A string or bytes.
    Bytes,
    /// A message, by its index in [`Schema::shapes`].
    Message(usize),
}

/// How a scalar is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    Varint,
    Fixed32,
    Fixed64,
}

#[derive(Debug, Clone, Copy)]
struct Field {
    value: Value,
    repeated: bool,
    /// A map, whose entries are `value`'s messages.
    map: bool,
}

#[derive(Debug, Default)]
struct Shape {
    /// An upper bound on the size of the message's struct.
    struct_bytes: usize,
    fields: HashMap<u32, Field>,
}

/// The fields of every message in a `FileDescriptorSet`.
#[derive(Debug, Default)]
pub struct Schema {
    shapes: Vec<Shape>,
    /// Full names (`package.Message`) to indices in `shapes`.
    by_name: HashMap<String, usize>,
}

/// The schema of every contract in [`crate::FILE_DESCRIPTOR_SET`], read once.
pub fn contracts() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema::from_descriptor_set(crate::FILE_DESCRIPTOR_SET))
}

/// Why a message has no bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unbounded {
    /// The contracts describe no message of that name.
    UnknownMessage,
    /// The wire form is malformed where the reason says: prost refuses it too, but only after
    /// decoding what comes before, which may be much more than the message's length (a field
    /// whose length runs past its parent's end is decoded to the end of the whole message).
    Malformed(&'static str),
}

/// An upper bound on the bytes the message `full_name` (`package.Message`) allocates when
/// decoded from `wire`, beside its own struct.
pub fn decoded_bound(full_name: &str, wire: &[u8]) -> Result<usize, Unbounded> {
    contracts().decoded_bound(full_name, wire)
}

/// A message of the contracts' schema, looked up once ([`Schema::message`]) for the many
/// messages of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageShape(usize);

impl Schema {
    /// The schema of an encoded `FileDescriptorSet` (empty when it cannot be decoded).
    pub fn from_descriptor_set(encoded: &[u8]) -> Self {
        let Ok(set) = <FileDescriptorSet as prost::Message>::decode(encoded) else {
            return Self::default();
        };
        let mut descriptors = Vec::new();
        for file in &set.file {
            let package = file.package();
            for message in &file.message_type {
                collect(package, message, &mut descriptors);
            }
        }
        let by_name: HashMap<String, usize> =
            descriptors.iter().enumerate().map(|(i, (name, _))| (name.clone(), i)).collect();
        let mut shapes: Vec<Shape> = descriptors
            .iter()
            .map(|(_, message)| Shape { struct_bytes: 0, fields: fields(message, &by_name) })
            .collect();
        let mut sizes = vec![None; shapes.len()];
        for i in 0..shapes.len() {
            struct_size(i, &descriptors, &by_name, &mut sizes, &mut vec![false; shapes.len()]);
        }
        for (shape, size) in shapes.iter_mut().zip(sizes) {
            shape.struct_bytes = size.unwrap_or(0);
        }
        Self { shapes, by_name }
    }

    /// An upper bound on the size of the struct of the message `full_name`.
    pub fn struct_bound(&self, full_name: &str) -> Option<usize> {
        self.by_name.get(full_name).map(|&i| self.shapes[i].struct_bytes)
    }

    /// See [`decoded_bound`].
    pub fn decoded_bound(&self, full_name: &str, wire: &[u8]) -> Result<usize, Unbounded> {
        let shape = self.message(full_name).ok_or(Unbounded::UnknownMessage)?;
        self.bound_of(shape, wire).map_err(Unbounded::Malformed)
    }

    /// The message `full_name` (`package.Message`), where the schema describes it.
    pub fn message(&self, full_name: &str) -> Option<MessageShape> {
        self.by_name.get(full_name).map(|&i| MessageShape(i))
    }

    /// [`Self::decoded_bound`] of a message looked up with [`Self::message`]; the error says
    /// where `wire` is malformed.
    pub fn bound_of(&self, shape: MessageShape, wire: &[u8]) -> Result<usize, &'static str> {
        if shape.0 >= self.shapes.len() {
            return Err("the message was looked up in another schema");
        }
        self.heap(shape.0, wire, 0)
    }

    /// What decoding `data` as the message `shape` allocates, or why prost refuses it.
    fn heap(&self, shape: usize, mut data: &[u8], depth: u32) -> Result<usize, &'static str> {
        if depth > MAX_DEPTH {
            return Err("nested too deep");
        }
        let shape = &self.shapes[shape];
        let mut total = 0usize;
        // Repeated fields seen so far (those numbered under 128): the first value of each
        // allocates the Vec's first capacity.
        let mut seen = 0u128;
        while !data.is_empty() {
            let key = read_varint(&mut data).ok_or("a field's key is cut short")?;
            let (number, wire) = ((key >> 3) as u32, (key & 7) as u8);
            let payload = next_value(&mut data, number, wire, depth)?;
            let Some(field) = shape.fields.get(&number) else { continue };
            let cost = self.field_cost(field, wire, payload, depth)?;
            total = total.saturating_add(cost);
            if field.repeated && !field.map {
                let first = number >= 128 || seen & (1 << number) == 0;
                if number < 128 {
                    seen |= 1 << number;
                }
                if first {
                    total = total.saturating_add(VEC_FIRST_CAPACITY * self.entry_bytes(field.value));
                }
            }
        }
        Ok(total)
    }

    /// What one value of `field` sent as `wire` allocates, or why prost refuses it.
    fn field_cost(&self, field: &Field, wire: u8, payload: &[u8], depth: u32) -> Result<usize, &'static str> {
        const WIRE_TYPE: &str = "a field is sent with another wire type than its own";
        let entry = self.entry_bytes(field.value);
        if field.map {
            let Value::Message(entry_shape) = field.value else { return Err(WIRE_TYPE) };
            if wire != 2 {
                return Err(WIRE_TYPE);
            }
            let slot = MAP_GROWTH * (self.shapes[entry_shape].struct_bytes + 1);
            return Ok(slot.saturating_add(self.heap(entry_shape, payload, depth + 1)?));
        }
        match (field.value, wire) {
            (Value::Scalar { bytes, wire: width }, 2) if field.repeated => {
                let count = match width {
                    Width::Varint => payload.iter().filter(|&&b| b < 0x80).count(),
                    Width::Fixed32 => payload.len() / 4,
                    Width::Fixed64 => payload.len() / 8,
                };
                Ok(VEC_GROWTH * count * bytes)
            }
            (Value::Scalar { wire: width, .. }, _) => {
                let expected = match width {
                    Width::Varint => 0,
                    Width::Fixed64 => 1,
                    Width::Fixed32 => 5,
                };
                if wire != expected {
                    return Err(WIRE_TYPE);
                }
                Ok(if field.repeated { VEC_GROWTH * entry } else { 0 })
            }
            (Value::Bytes, 2) => {
                let contents = if payload.is_empty() { 0 } else { payload.len() + ALLOCATION_OVERHEAD };
                Ok(contents + if field.repeated { VEC_GROWTH * entry } else { 0 })
            }
            (Value::Message(shape), 2) => {
                let heap = self.heap(shape, payload, depth + 1)?;
                Ok(heap.saturating_add(if field.repeated { VEC_GROWTH * entry } else { 0 }))
            }
            _ => Err(WIRE_TYPE),
        }
    }

    /// Bytes one value takes as an entry of a `Vec`.
    fn entry_bytes(&self, value: Value) -> usize {
        match value {
            Value::Scalar { bytes, .. } => bytes,
            Value::Bytes => BYTES_FIELD,
            Value::Message(shape) => self.shapes[shape].struct_bytes,
        }
    }
}

/// Every message in `message` and below, by full name, into `out`.
fn collect(prefix: &str, message: &DescriptorProto, out: &mut Vec<(String, DescriptorProto)>) {
    let name = if prefix.is_empty() { message.name().to_string() } else { format!("{prefix}.{}", message.name()) };
    for nested in &message.nested_type {
        collect(&name, nested, out);
    }
    out.push((name, message.clone()));
}

/// The message a field's type name (`.package.Message`) points at.
fn message_index(field: &FieldDescriptorProto, by_name: &HashMap<String, usize>) -> Option<usize> {
    by_name.get(field.type_name().trim_start_matches('.')).copied()
}

fn fields(message: &DescriptorProto, by_name: &HashMap<String, usize>) -> HashMap<u32, Field> {
    let mut fields = HashMap::new();
    for field in &message.field {
        let value = match field.r#type() {
            Type::Bool => Value::Scalar { bytes: 1, wire: Width::Varint },
            Type::Int32 | Type::Uint32 | Type::Sint32 | Type::Enum => Value::Scalar { bytes: 4, wire: Width::Varint },
            Type::Int64 | Type::Uint64 | Type::Sint64 => Value::Scalar { bytes: 8, wire: Width::Varint },
            Type::Fixed32 | Type::Sfixed32 | Type::Float => Value::Scalar { bytes: 4, wire: Width::Fixed32 },
            Type::Fixed64 | Type::Sfixed64 | Type::Double => Value::Scalar { bytes: 8, wire: Width::Fixed64 },
            Type::String | Type::Bytes => Value::Bytes,
            Type::Message => match message_index(field, by_name) {
                Some(i) => Value::Message(i),
                None => continue,
            },
            // Groups: prost refuses them where a field is declared otherwise.
            Type::Group => continue,
        };
        let repeated = field.label() == Label::Repeated;
        let map = repeated && is_map_entry(field, message);
        fields.insert(field.number() as u32, Field { value, repeated, map });
    }
    fields
}

/// Whether a repeated message field is a map (its type is a nested map-entry message).
fn is_map_entry(field: &FieldDescriptorProto, message: &DescriptorProto) -> bool {
    let Some(entry) = field.type_name().rsplit('.').next() else { return false };
    message
        .nested_type
        .iter()
        .any(|nested| nested.name() == entry && nested.options.as_ref().is_some_and(|o| o.map_entry()))
}

/// An upper bound on the size of message `i`'s struct: the sum of its fields' sizes, each
/// rounded up to 8 bytes; a oneof as its largest member and a tag; a message field as the
/// submessage's struct and an `Option`'s tag (a recursive one boxed).
fn struct_size(
    i: usize,
    descriptors: &[(String, DescriptorProto)],
    by_name: &HashMap<String, usize>,
    sizes: &mut Vec<Option<usize>>,
    visiting: &mut Vec<bool>,
) -> usize {
    if let Some(size) = sizes[i] {
        return size;
    }
    if visiting[i] {
        // Recursion: prost boxes the field.
        return 8;
    }
    visiting[i] = true;
    let message = &descriptors[i].1;
    let mut total = 0;
    let mut oneofs: HashMap<i32, usize> = HashMap::new();
    for field in &message.field {
        let repeated = field.label() == Label::Repeated;
        let size = if repeated && is_map_entry(field, message) {
            MAP_FIELD
        } else if repeated {
            VEC_FIELD
        } else {
            match field.r#type() {
                Type::String | Type::Bytes => BYTES_FIELD,
                Type::Message | Type::Group => match message_index(field, by_name) {
                    Some(m) => struct_size(m, descriptors, by_name, sizes, visiting).div_ceil(8) * 8 + 8,
                    None => 8,
                },
                _ if field.proto3_optional() => 16,
                _ => 8,
            }
        };
        match field.oneof_index.filter(|_| !field.proto3_optional()) {
            Some(oneof) => {
                let largest = oneofs.entry(oneof).or_default();
                *largest = (*largest).max(size);
            }
            None => total += size,
        }
    }
    total += oneofs.values().map(|largest| largest + 8).sum::<usize>();
    visiting[i] = false;
    sizes[i] = Some(total);
    total
}

/// Reads a varint; `None` when it is cut short or longer than ten bytes.
fn read_varint(data: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &byte) in data.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            *data = &data[i + 1..];
            return Some(value);
        }
    }
    None
}

/// Takes the value of a field with wire type `wire` off the front of `data`: a length-delimited
/// value's payload (which must end within `data`: a nested message's fields within it), or an
/// empty slice for the others; or why the data is malformed.
fn next_value<'a>(data: &mut &'a [u8], number: u32, wire: u8, depth: u32) -> Result<&'a [u8], &'static str> {
    const CUT: &str = "a value is cut short";
    match wire {
        0 => read_varint(data).map(|_| &[][..]).ok_or(CUT),
        1 => take(data, 8).map(|_| &[][..]).ok_or(CUT),
        5 => take(data, 4).map(|_| &[][..]).ok_or(CUT),
        2 => {
            let len = read_varint(data).ok_or(CUT)?;
            let len = usize::try_from(len).map_err(|_| "a length runs past the end of its message")?;
            take(data, len).ok_or("a length runs past the end of its message")
        }
        3 => skip_group(data, number, depth).map(|()| &[][..]),
        4 => Err("a group ends that did not start"),
        _ => Err("an unknown wire type"),
    }
}

fn take<'a>(data: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    if len > data.len() {
        return None;
    }
    let (head, tail) = data.split_at(len);
    *data = tail;
    Some(head)
}

/// Skips a group's fields up to its end (prost skips unknown groups without allocating).
fn skip_group(data: &mut &[u8], number: u32, depth: u32) -> Result<(), &'static str> {
    if depth >= MAX_DEPTH {
        return Err("nested too deep");
    }
    loop {
        let key = read_varint(data).ok_or("a group is cut short")?;
        let (inner, wire) = ((key >> 3) as u32, (key & 7) as u8);
        if wire == 4 {
            return if inner == number { Ok(()) } else { Err("a group ends with another field's number") };
        }
        next_value(data, inner, wire, depth + 1)?;
    }
}

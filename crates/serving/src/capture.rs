//! Capturing ModelInfer inputs for retraining: each captured item is kept as an OIP
//! `ModelInferRequest` of that item alone (its inputs' names, datatypes, shapes with a batch of
//! one, and raw contents), a message any OIP client library decodes.

use bytes::Bytes;
use prost::Message;
use vigil_inference::config::ModelConfig;
use vigil_inference::tensor::{Tensor, element_count, parse_bytes_elements, serialize_bytes_elements};
use vigil_proto::inference::ModelInferRequest;
use vigil_proto::inference::model_infer_request::InferInputTensor;

/// The media type captured ModelInfer items are stored with.
pub const CONTENT_TYPE: &str = "application/x-protobuf; messageType=inference.ModelInferRequest";

/// Item `item` of a request's decoded `inputs` (in the model's input order) as a request of its
/// own; None when the inputs do not split into `items` items (an unbatched model has one).
pub fn item_request(config: &ModelConfig, inputs: &[Tensor], item: usize, items: usize) -> Option<Vec<u8>> {
    let mut request = ModelInferRequest {
        model_name: config.name.clone(),
        model_version: config.version.to_string(),
        ..Default::default()
    };
    let batched = config.max_batch_size > 0;
    for (spec, tensor) in config.inputs.iter().zip(inputs) {
        let (shape, data) = if batched {
            let per_item = element_count(tensor.shape.get(1..)?);
            let mut shape = tensor.shape.clone();
            *shape.first_mut()? = 1;
            (shape, item_slice(tensor, item, items, per_item)?)
        } else {
            (tensor.shape.clone(), tensor.data.clone())
        };
        request.inputs.push(InferInputTensor {
            name: spec.name.clone(),
            datatype: tensor.datatype.as_str().into(),
            shape,
            ..Default::default()
        });
        request.raw_input_contents.push(data);
    }
    Some(request.encode_to_vec())
}

/// The raw contents of item `item` of `items` in a batched tensor of `per_item` elements each.
fn item_slice(tensor: &Tensor, item: usize, items: usize, per_item: usize) -> Option<Bytes> {
    if *tensor.shape.first()? as usize != items || item >= items {
        return None;
    }
    match tensor.datatype.element_size() {
        Some(size) => {
            let range = item * per_item * size..(item + 1) * per_item * size;
            (range.end <= tensor.data.len()).then(|| tensor.data.slice(range))
        }
        None => {
            let elements = parse_bytes_elements(&tensor.data).ok()?;
            elements.get(item * per_item..(item + 1) * per_item).map(|e| serialize_bytes_elements(e).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_inference::tensor::DataType;

    fn config(batched: bool) -> ModelConfig {
        toml::from_str(&format!(
            "name = \"m\"\nversion = 3\nplatform = \"onnxruntime_onnx\"\nmax_batch_size = {}\n\
             [[inputs]]\nname = \"x\"\ndatatype = \"FP32\"\ndims = [2]\n\
             [[inputs]]\nname = \"text\"\ndatatype = \"BYTES\"\ndims = [1]\n\
             [[outputs]]\nname = \"y\"\ndatatype = \"FP32\"\ndims = [1]\n",
            if batched { 8 } else { 0 }
        ))
        .unwrap()
    }

    #[test]
    fn an_item_of_a_batch_is_a_request_of_its_own_with_its_values_only() {
        let values: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let x = Tensor { datatype: DataType::Fp32, shape: vec![3, 2], data: values.into() };
        let text = Tensor::from_bytes_elements(vec![3, 1], &["a", "bcd", ""]);
        let bytes = item_request(&config(true), &[x.clone(), text.clone()], 1, 3).unwrap();
        let request = ModelInferRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!((request.model_name.as_str(), request.model_version.as_str()), ("m", "3"));
        assert_eq!(request.inputs[0].shape, [1, 2]);
        assert_eq!(request.inputs[0].datatype, "FP32");
        let got: Vec<f32> =
            request.raw_input_contents[0].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(got, [3.0, 4.0]);
        assert_eq!((request.inputs[1].name.as_str(), request.inputs[1].shape.as_slice()), ("text", &[1i64, 1][..]));
        assert_eq!(parse_bytes_elements(&request.raw_input_contents[1]).unwrap(), [b"bcd"]);
        // Out of range, or a batch of another size: nothing.
        assert!(item_request(&config(true), &[x.clone(), text.clone()], 3, 3).is_none());
        assert!(item_request(&config(true), &[x, text], 0, 2).is_none());
    }

    #[test]
    fn an_unbatched_request_is_kept_whole() {
        let x = Tensor { datatype: DataType::Fp32, shape: vec![2], data: vec![0; 8].into() };
        let text = Tensor::from_bytes_elements(vec![1], &["hello"]);
        let request =
            ModelInferRequest::decode(item_request(&config(false), &[x, text], 0, 1).unwrap().as_slice()).unwrap();
        assert_eq!(request.inputs[0].shape, [2]);
        assert_eq!(request.raw_input_contents[1], serialize_bytes_elements(&["hello"]));
    }
}

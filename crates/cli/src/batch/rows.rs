//! The rows of a table scored by one model with OIP `ModelInfer` on the cloud server, several
//! rows per request and several requests at once; the server logs every row as a prediction,
//! and each output line carries its prediction id for labels sent later.

use crate::connect::SecureChannel;
use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use serde::Serialize;
use vigil_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use vigil_proto::inference::model_infer_request::InferInputTensor;
use vigil_proto::inference::{
    ModelConfigRequest, ModelInferRequest, ModelInferResponse, ModelMetadataRequest, infer_parameter,
};
use vigil_serving::oip::{LABELS_PARAMETER, PREDICTION_IDS_PARAMETER, feature_parameter_key};

use super::{BatchArgs, Cell, Table};

/// Largest message either way.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// What the model takes and names, as the server describes it.
#[derive(Debug)]
struct ModelInput {
    name: String,
    /// Values per row.
    width: usize,
    max_batch_size: usize,
    /// The columns the model names for this input, when it does.
    features: Option<Vec<String>>,
    labels: Vec<String>,
}

/// One output line.
#[derive(Serialize)]
struct Line {
    /// 1-based row of the table.
    row: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prediction_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    outputs: HashMap<String, Vec<f32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub async fn run(table: &Table, model: &str, args: &BatchArgs) -> Result<u8> {
    if table.rows.is_empty() {
        bail!("the table has no rows");
    }
    let what = format!("the cloud server at {} (--server)", args.speak.server);
    let channel = crate::connect::channel(&args.speak.server, &what).await?;
    let oip = GrpcInferenceServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let input = describe(oip.clone(), model).await?;
    let id_column = match &args.id_column {
        Some(c) => Some(column(table, c)?),
        None => table.column("id"),
    };
    let columns = choose_columns(table, &input, &args.columns, id_column)?;
    let (values, missing) = values(table, &columns)?;

    let per_request = args.rows_per_request.min(input.max_batch_size);
    let chunks: Vec<std::ops::Range<usize>> =
        (0..table.rows.len()).step_by(per_request).map(|s| s..(s + per_request).min(table.rows.len())).collect();
    let mut out = super::output(args.output.as_deref())?;
    let bar = super::progress(table.rows.len(), "rows");
    let started = Instant::now();
    let width = input.width;
    let mut answers = futures::stream::iter(chunks.iter().cloned())
        .map(|rows| {
            let mut oip = oip.clone();
            let data: Vec<u8> =
                values[rows.start * width..rows.end * width].iter().flat_map(|v| v.to_le_bytes()).collect();
            let request = ModelInferRequest {
                model_name: model.to_string(),
                inputs: vec![InferInputTensor {
                    name: input.name.clone(),
                    datatype: "FP32".into(),
                    shape: vec![rows.len() as i64, width as i64],
                    ..Default::default()
                }],
                raw_input_contents: vec![data.into()],
                ..Default::default()
            };
            async move { (rows, oip.model_infer(request).await) }
        })
        .buffered(args.concurrency);
    let mut failed = 0;
    while let Some((rows, answer)) = answers.next().await {
        let lines = match answer {
            Ok(response) => lines(rows.clone(), &response.into_inner(), &input.labels),
            Err(status) => Err(anyhow!("{:?}: {}", status.code(), status.message())),
        };
        let lines = lines.unwrap_or_else(|e| {
            failed += rows.len();
            rows.clone()
                .map(|row| Line {
                    row: row + 1,
                    id: None,
                    prediction_id: None,
                    label: None,
                    outputs: HashMap::new(),
                    error: Some(format!("{e:#}")),
                })
                .collect()
        });
        for mut line in lines {
            line.id = id_column.and_then(|c| table.rows[line.row - 1][c].text());
            writeln!(out, "{}", serde_json::to_string(&line).expect("serialisable"))?;
        }
        bar.inc(rows.len() as u64);
    }
    out.flush()?;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "{} rows scored by {model} in {elapsed:.1} s ({:.0} rows/s, {} requests of at most {per_request}), {failed} failed; \
         {missing} missing values sent as NaN; columns: {}",
        table.rows.len(),
        table.rows.len() as f64 / elapsed,
        chunks.len(),
        columns.iter().map(|&c| table.columns[c].as_str()).collect::<Vec<_>>().join(", ")
    );
    Ok(if failed > 0 { crate::inspect::exit::FAILED } else { 0 })
}

use std::io::Write as _;

/// The model's one FP32 input with a batch dimension, its columns and labels.
async fn describe(mut oip: GrpcInferenceServiceClient<SecureChannel>, model: &str) -> Result<ModelInput> {
    let refused = |s: tonic::Status| anyhow!("model '{model}': {:?}: {}", s.code(), s.message());
    let metadata = oip
        .model_metadata(ModelMetadataRequest { name: model.into(), version: String::new() })
        .await
        .map_err(refused)?
        .into_inner();
    let config = oip
        .model_config(ModelConfigRequest { name: model.into(), version: String::new() })
        .await
        .map_err(refused)?
        .into_inner()
        .config
        .context("the server sent no model config")?;
    let [input] = metadata.inputs.as_slice() else {
        bail!("model '{model}' takes {} inputs; batch scoring of a table feeds models with one", metadata.inputs.len());
    };
    if input.datatype != "FP32" {
        bail!("model '{model}': input '{}' is {}; batch scoring of a table sends FP32", input.name, input.datatype);
    }
    if config.max_batch_size <= 0 {
        bail!("model '{model}' takes no batch dimension (max_batch_size 0): it cannot score rows together");
    }
    let width = match input.shape.as_slice() {
        [_, w] if *w > 0 => *w as usize,
        shape => bail!(
            "model '{model}': input '{}' has shape {shape:?}; a table's rows need [batch, columns] with a fixed number of columns",
            input.name
        ),
    };
    let names = |key: &str| -> Result<Option<Vec<String>>> {
        config
            .parameters
            .get(key)
            .map(|p| {
                serde_json::from_str(&p.string_value).with_context(|| format!("parameter '{key}' of model '{model}'"))
            })
            .transpose()
    };
    Ok(ModelInput {
        name: input.name.clone(),
        width,
        max_batch_size: config.max_batch_size as usize,
        features: names(&feature_parameter_key(&input.name))?,
        labels: names(LABELS_PARAMETER)?.unwrap_or_default(),
    })
}

fn column(table: &Table, name: &str) -> Result<usize> {
    table
        .column(name)
        .with_context(|| format!("the table has no column '{name}' (columns: {})", table.columns.join(", ")))
}

/// The columns fed to the model, in its input's order: those given, else those the model names,
/// else every numeric column but the id.
fn choose_columns(table: &Table, input: &ModelInput, given: &[String], id: Option<usize>) -> Result<Vec<usize>> {
    let (columns, how) = if !given.is_empty() {
        (given.iter().map(|c| column(table, c)).collect::<Result<Vec<_>>>()?, "given with --columns")
    } else if let Some(names) = &input.features {
        (names.iter().map(|c| column(table, c)).collect::<Result<Vec<_>>>()?, "named by the model")
    } else {
        let numeric = |c: usize| table.rows.iter().any(|r| matches!(r[c], Cell::Number(_)));
        ((0..table.columns.len()).filter(|&c| Some(c) != id && numeric(c)).collect(), "every numeric column but the id")
    };
    if columns.len() != input.width {
        bail!(
            "the model's input '{}' takes {} values per row, but {} columns were chosen ({how}: {}); pick them with --columns",
            input.name,
            input.width,
            columns.len(),
            columns.iter().map(|&c| table.columns[c].as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(columns)
}

/// The chosen columns of every row as FP32, row after row, and how many cells were missing
/// (sent as NaN). A text cell is an error naming its row and column.
fn values(table: &Table, columns: &[usize]) -> Result<(Vec<f32>, usize)> {
    let mut values = Vec::with_capacity(table.rows.len() * columns.len());
    let mut missing = 0;
    for (i, row) in table.rows.iter().enumerate() {
        for &c in columns {
            values.push(match &row[c] {
                Cell::Number(v) => *v as f32,
                Cell::Missing => {
                    missing += 1;
                    f32::NAN
                }
                Cell::Text(t) => bail!("row {}, column '{}': '{t}' is not a number", i + 1, table.columns[c]),
            });
        }
    }
    Ok((values, missing))
}

/// One line per row of a ModelInfer answer.
fn lines(rows: std::ops::Range<usize>, response: &ModelInferResponse, labels: &[String]) -> Result<Vec<Line>> {
    let n = rows.len();
    let ids: Vec<String> =
        match response.parameters.get(PREDICTION_IDS_PARAMETER).and_then(|p| p.parameter_choice.as_ref()) {
            Some(infer_parameter::ParameterChoice::StringParam(s)) => s.split(',').map(str::to_string).collect(),
            _ => Vec::new(),
        };
    let mut per_output = Vec::new();
    for (tensor, raw) in response.outputs.iter().zip(&response.raw_output_contents) {
        if tensor.datatype != "FP32" || raw.len() % (4 * n) != 0 {
            bail!(
                "output '{}' is {} with {} bytes for {n} rows; expected FP32 per row",
                tensor.name,
                tensor.datatype,
                raw.len()
            );
        }
        let values: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        per_output.push((tensor.name.clone(), values));
    }
    Ok(rows
        .enumerate()
        .map(|(i, row)| {
            let outputs: HashMap<String, Vec<f32>> = per_output
                .iter()
                .map(|(name, values)| {
                    let per = values.len() / n;
                    (name.clone(), values[i * per..(i + 1) * per].to_vec())
                })
                .collect();
            let first = per_output.first().map(|(name, _)| &outputs[name]);
            let label = first.filter(|s| s.len() == labels.len() && !s.is_empty()).map(|scores| {
                let best = scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
                labels[best].clone()
            });
            Line { row: row + 1, id: None, prediction_id: ids.get(i).cloned(), label, outputs, error: None }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            columns: vec!["id".into(), "age".into(), "note".into(), "fever".into()],
            rows: vec![
                vec![Cell::Text("a".into()), Cell::Number(40.0), Cell::Text("x".into()), Cell::Number(1.0)],
                vec![Cell::Text("b".into()), Cell::Missing, Cell::Text("y".into()), Cell::Number(0.0)],
            ],
        }
    }

    fn input(features: Option<&[&str]>) -> ModelInput {
        ModelInput {
            name: "x".into(),
            width: 2,
            max_batch_size: 8,
            features: features.map(|f| f.iter().map(|s| s.to_string()).collect()),
            labels: Vec::new(),
        }
    }

    #[test]
    fn columns_come_from_the_flag_the_model_or_the_numbers_in_the_table() {
        let t = table();
        assert_eq!(choose_columns(&t, &input(None), &[], Some(0)).unwrap(), [1, 3]);
        assert_eq!(choose_columns(&t, &input(Some(&["fever", "age"])), &[], Some(0)).unwrap(), [3, 1]);
        let given = ["fever".to_string(), "age".to_string()];
        assert_eq!(choose_columns(&t, &input(Some(&["age", "fever"])), &given, None).unwrap(), [3, 1]);
        let e = choose_columns(&t, &input(Some(&["age", "cough"])), &[], None).unwrap_err().to_string();
        assert!(e.contains("no column 'cough' (columns: id, age, note, fever)"), "{e}");
        let e = choose_columns(&t, &input(None), &["age".to_string()], None).unwrap_err().to_string();
        assert!(e.contains("takes 2 values per row, but 1 columns were chosen (given with --columns: age)"), "{e}");
    }

    #[test]
    fn missing_cells_are_nan_and_text_is_refused_where_it_stands() {
        let t = table();
        let (v, missing) = values(&t, &[1, 3]).unwrap();
        assert_eq!(missing, 1);
        assert_eq!((v[0], v[1], v[3]), (40.0, 1.0, 0.0));
        assert!(v[2].is_nan());
        let e = values(&t, &[2]).unwrap_err().to_string();
        assert_eq!(e, "row 1, column 'note': 'x' is not a number");
    }
}

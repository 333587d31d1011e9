//! Reading a Piper voice's weights out of its `.onnx` file.
//!
//! Only the initializers (the stored tensors) are used; the graph's nodes serve to name the
//! tensors that the exporter renamed. Piper's exporter keeps PyTorch names for most tensors but:
//!
//! - folds weight norm into the coupling flows' convolutions and stores the result as
//!   `onnx::Conv_NNNN`; the consuming node (`/flow/flows.6/enc/in_layers.0/Conv`) names the owner,
//!   so the tensor becomes `flow.flows.6.enc.in_layers.0.weight`;
//! - stores the phoneme embedding table as `sid` (it becomes `enc_p.emb.weight`, named by the
//!   `/enc_p/emb/Gather` node that reads it; a speaker table is named by `/emb_g/Gather` alike);
//! - stores `dp.flows.0` pre-computed as `exp(-logs)` under `/dp/flows.0/Exp_output_0` (it becomes
//!   `dp.flows.0.exp_neg_logs`).

use std::{collections::HashMap, path::Path};

use candle_core::{DType, Device, Tensor};
use prost::{Message, bytes::Bytes};

use crate::Error;

#[allow(clippy::all, missing_docs)]
mod onnx {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

/// ONNX `TensorProto.DataType` values this reader understands.
const FLOAT: i32 = 1;
const INT32: i32 = 6;
const INT64: i32 = 7;
const DOUBLE: i32 = 11;

/// The named tensors of a voice, with PyTorch-style names.
#[derive(Debug, Clone)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Reads every initializer of the ONNX file at `path` onto `device`.
    pub fn from_onnx_file(path: &Path, device: &Device) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_onnx_bytes(Bytes::from(bytes), device)
    }

    /// Reads every initializer of an ONNX model held in memory.
    pub fn from_onnx_bytes(bytes: Bytes, device: &Device) -> Result<Self, Error> {
        let model = onnx::ModelProto::decode(bytes)?;
        let graph = model
            .graph
            .ok_or_else(|| Error::Format("the ONNX model has no graph".into()))?;
        // Who consumes each initializer, and at which input slot: that is how renamed tensors are
        // tied back to the layer that owns them.
        let mut consumer: HashMap<&str, (&str, usize)> = HashMap::new();
        for node in &graph.node {
            for (slot, input) in node.input.iter().enumerate() {
                consumer.entry(input.as_str()).or_insert((&node.name, slot));
            }
        }
        let mut tensors = HashMap::with_capacity(graph.initializer.len());
        for init in &graph.initializer {
            let name = canonical_name(&init.name, consumer.get(init.name.as_str()).copied());
            let tensor = decode_tensor(init, device)?;
            tensors.insert(name, tensor);
        }
        Ok(Self { tensors })
    }

    /// Builds weights from tensors already named the PyTorch way (for tests and converters).
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Self {
        Self { tensors }
    }

    /// The tensor called `name`, or an error naming what is missing.
    pub fn get(&self, name: &str) -> Result<&Tensor, Error> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_owned()))
    }

    /// Whether a tensor called `name` exists (optional layers such as speaker conditioning).
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// How many tensors were read.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether no tensor was read.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// All tensor names, sorted (for diagnostics).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// Maps an initializer's stored name to the PyTorch-style name the model code asks for.
///
/// `consumer` is the first node that reads the initializer, with the input slot it reads it at.
pub fn canonical_name(stored: &str, consumer: Option<(&str, usize)>) -> String {
    if stored == "/dp/flows.0/Exp_output_0" {
        return "dp.flows.0.exp_neg_logs".to_owned();
    }
    let owner_op = consumer.and_then(|(node, slot)| {
        let (owner, op) = node.strip_prefix('/')?.rsplit_once('/')?;
        Some((owner.replace('/', "."), op, slot))
    });
    match owner_op {
        // An embedding table is the data input of its module's Gather. This is how the phoneme
        // table stored as `sid` (and a speaker table, whatever it is called) gets its name back.
        Some((owner, op, 0)) if op.starts_with("Gather") && !stored.contains('.') => {
            return format!("{owner}.weight");
        }
        // Weight-normed convolutions were folded and renamed `onnx::Conv_NNNN`; Conv and
        // ConvTranspose take (input, weight, bias). Other `onnx::` tensors are graph constants.
        Some((owner, op, slot)) if stored.starts_with("onnx::") && op.starts_with("Conv") => {
            match slot {
                1 => return format!("{owner}.weight"),
                2 => return format!("{owner}.bias"),
                _ => {}
            }
        }
        _ => {}
    }
    if stored == "sid" {
        return "enc_p.emb.weight".to_owned();
    }
    stored.to_owned()
}

fn decode_tensor(init: &onnx::TensorProto, device: &Device) -> Result<Tensor, Error> {
    if init.data_location == 1 {
        return Err(Error::Format(format!(
            "tensor {} is stored outside the model file, which is not supported",
            init.name
        )));
    }
    let shape: Vec<usize> = init
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| Error::Format(format!("tensor {} has a negative dimension", init.name)))?;
    let count: usize = shape.iter().product();
    let raw = &init.raw_data;
    let bad_len = |got: usize| {
        Error::Format(format!(
            "tensor {} holds {got} values, its shape {shape:?} needs {count}",
            init.name
        ))
    };
    let tensor = match init.data_type {
        FLOAT => {
            let values: Vec<f32> = if raw.is_empty() {
                init.float_data.clone()
            } else {
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            };
            if values.len() != count {
                return Err(bad_len(values.len()));
            }
            Tensor::from_vec(values, shape.as_slice(), device)?
        }
        DOUBLE => {
            let values: Vec<f64> = if raw.is_empty() {
                init.double_data.clone()
            } else {
                raw.chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("chunk of 8")))
                    .collect()
            };
            if values.len() != count {
                return Err(bad_len(values.len()));
            }
            // The model computes in f32; doubles only ever hold constants.
            Tensor::from_vec(values, shape.as_slice(), device)?.to_dtype(DType::F32)?
        }
        INT64 | INT32 => {
            let values: Vec<i64> = if !raw.is_empty() && init.data_type == INT64 {
                raw.chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("chunk of 8")))
                    .collect()
            } else if !raw.is_empty() {
                raw.chunks_exact(4)
                    .map(|b| i64::from(i32::from_le_bytes(b.try_into().expect("chunk of 4"))))
                    .collect()
            } else if init.data_type == INT64 {
                init.int64_data.clone()
            } else {
                init.int32_data.iter().map(|&v| i64::from(v)).collect()
            };
            if values.len() != count {
                return Err(bad_len(values.len()));
            }
            Tensor::from_vec(values, shape.as_slice(), device)?
        }
        other => {
            return Err(Error::Format(format!(
                "tensor {} has ONNX data type {other}, which is not supported",
                init.name
            )));
        }
    };
    Ok(tensor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renamed_tensors_get_their_owner_names() {
        assert_eq!(
            canonical_name(
                "onnx::Conv_8168",
                Some(("/flow/flows.6/enc/in_layers.0/Conv", 1))
            ),
            "flow.flows.6.enc.in_layers.0.weight"
        );
        assert_eq!(
            canonical_name(
                "onnx::Conv_9",
                Some(("/flow/flows.0/enc/res_skip_layers.3/Conv", 2))
            ),
            "flow.flows.0.enc.res_skip_layers.3.bias"
        );
        assert_eq!(canonical_name("sid", None), "enc_p.emb.weight");
        assert_eq!(
            canonical_name("sid", Some(("/enc_p/emb/Gather", 0))),
            "enc_p.emb.weight"
        );
        // A multi-speaker voice's speaker table, named by its Gather.
        assert_eq!(
            canonical_name("onnx::Gather_12", Some(("/emb_g/Gather", 0))),
            "emb_g.weight"
        );
        // A tensor that already has a PyTorch name keeps it.
        assert_eq!(
            canonical_name("emb_g.weight", Some(("/emb_g/Gather", 0))),
            "emb_g.weight"
        );
        assert_eq!(
            canonical_name("/dp/flows.0/Exp_output_0", None),
            "dp.flows.0.exp_neg_logs"
        );
        assert_eq!(
            canonical_name("dec.ups.0.weight", Some(("/dec/ups.0/ConvTranspose", 1))),
            "dec.ups.0.weight"
        );
        // A renamed constant that is not a layer's weight keeps its stored name.
        assert_eq!(
            canonical_name("onnx::Split_6893", Some(("/flow/flows.6/Split", 1))),
            "onnx::Split_6893"
        );
    }

    fn tensor_proto(name: &str, data_type: i32, dims: Vec<i64>) -> onnx::TensorProto {
        onnx::TensorProto {
            name: name.into(),
            data_type,
            dims,
            ..Default::default()
        }
    }

    #[test]
    fn decodes_typed_and_raw_fields() {
        let dev = Device::Cpu;
        let mut typed = tensor_proto("a", FLOAT, vec![2, 2]);
        typed.float_data = vec![1.0, 2.0, 3.0, 4.0];
        let t = decode_tensor(&typed, &dev).unwrap();
        assert_eq!(
            t.to_vec2::<f32>().unwrap(),
            vec![vec![1.0, 2.0], vec![3.0, 4.0]]
        );

        let mut raw = tensor_proto("b", FLOAT, vec![3]);
        raw.raw_data = [1.5f32, -2.0, 0.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
            .into();
        assert_eq!(
            decode_tensor(&raw, &dev).unwrap().to_vec1::<f32>().unwrap(),
            vec![1.5, -2.0, 0.25]
        );

        let mut ints = tensor_proto("c", INT64, vec![2]);
        ints.raw_data = [7i64, -3]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>()
            .into();
        assert_eq!(
            decode_tensor(&ints, &dev)
                .unwrap()
                .to_vec1::<i64>()
                .unwrap(),
            vec![7, -3]
        );

        let mut short = tensor_proto("d", FLOAT, vec![4]);
        short.float_data = vec![1.0];
        assert!(decode_tensor(&short, &dev).is_err());
    }

    #[test]
    fn a_whole_model_round_trips_through_protobuf() {
        let mut conv_w = tensor_proto("onnx::Conv_1", FLOAT, vec![1]);
        conv_w.float_data = vec![0.5];
        let mut emb = tensor_proto("sid", FLOAT, vec![1, 1]);
        emb.float_data = vec![2.0];
        let model = onnx::ModelProto {
            ir_version: 8,
            opset_import: vec![],
            graph: Some(onnx::GraphProto {
                node: vec![onnx::NodeProto {
                    input: vec!["x".into(), "onnx::Conv_1".into()],
                    output: vec!["y".into()],
                    name: "/flow/flows.2/enc/in_layers.1/Conv".into(),
                    op_type: "Conv".into(),
                }],
                initializer: vec![conv_w, emb],
                ..Default::default()
            }),
        };
        let weights = Weights::from_onnx_bytes(model.encode_to_vec().into(), &Device::Cpu).unwrap();
        assert_eq!(weights.len(), 2);
        let w = weights.get("flow.flows.2.enc.in_layers.1.weight").unwrap();
        assert_eq!(w.to_vec1::<f32>().unwrap(), vec![0.5]);
        assert!(weights.contains("enc_p.emb.weight"));
        assert!(matches!(weights.get("nope"), Err(Error::MissingTensor(_))));
    }
}

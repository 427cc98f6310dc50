//! Loading ONNX graphs into tract plans, once per bundle, shared by every thread.
//!
//! CPU (default build): `model_for_path` → input fact `[1, rest…]` → `into_optimized` →
//! `into_runnable`, one `Arc` plan per graph (tract's plans are `Send + Sync`; run states
//! are not shared: each run takes an idle one from the plan's pool, or spawns one when all
//! are busy on other threads, uses it for every input of its batch and gives it back).
//!
//! The plan is built for a batch of exactly one, and a batch runs one input at a time.
//! Measured with tract 0.23.9 on the shipped members (one thread, release): with the batch
//! left symbolic tract cannot pick its direct depthwise kernel or skip im2col, and effnet ran
//! 14.8 ms against 4.0 ms for a concrete batch of one; resnet 6.3 → 3.1 ms, vit 4.4 → 2.4 ms,
//! the localiser 6.5 → 3.8 ms. A concrete batch of 16 was slower per input than 16 runs of
//! one (effnet 7.1, resnet 6.9 ms per input). Running inputs one by one also makes a batch's
//! answers the single input's answers bit for bit.
//!
//! `cuda` feature: the typed model goes through tract's runtime registry by the virtual name
//! `gpu-or-cpu`, which takes CUDA when its driver and libraries load and the CPU otherwise;
//! the chosen runtime's name is reported. The CUDA transform is never called directly (it
//! panics without a GPU).

use super::EngineError;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tract_linalg::multithread::{Executor, multithread_tract_scope};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::{Runnable, State};

/// A pool of `threads` workers for tract's intra-op parallelism (matrix products split into
/// tiles), to share between plans; `None` for one thread (tract's default, no pool).
pub fn intra_op_executor(threads: usize) -> Option<Executor> {
    (threads > 1).then(|| Executor::multithread_with_name(threads, "tirp-intra-op"))
}

/// A graph ready to run: its plan and the positions of the outputs the engine reads.
#[derive(Clone)]
pub struct Plan {
    runnable: Arc<dyn Runnable>,
    /// The file it came from, for error messages.
    pub file: String,
    /// Names of the selected outputs, in the order [`Plan::run`] returns them.
    pub outputs: Vec<String>,
    /// Which runtime runs it ("cpu", "cuda").
    pub backend: String,
    /// Intra-op worker pool ([`intra_op_executor`]); `None`: one thread.
    executor: Option<Executor>,
    /// Idle run states, reused so a run does not allocate a new one: a run takes one (or
    /// spawns one when every state is busy on another thread) and gives it back after.
    states: Arc<Mutex<Vec<Box<dyn State>>>>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("file", &self.file)
            .field("outputs", &self.outputs)
            .field("backend", &self.backend)
            .finish()
    }
}

/// Mean time per run spent in one kind of tract operator ([`Plan::profile`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OpTime {
    /// tract's name of the optimised operator (`OptMatMul`, `DepthWiseConv`, …).
    pub op: String,
    /// How many nodes of the plan run it.
    pub nodes: usize,
    pub ms: f64,
}

/// An output of a run: row-major values and their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

fn tract_err(file: &str, what: &str) -> impl Fn(TractError) -> EngineError {
    let (file, what) = (file.to_owned(), what.to_owned());
    move |e| EngineError::Model {
        file: file.clone(),
        message: format!("{what}: {e:#}"),
    }
}

/// Declared output names of an ONNX graph, in graph order.
fn output_names(model: &InferenceModel) -> Vec<String> {
    model
        .output_outlets()
        .map(|o| {
            o.iter()
                .map(|&outlet| {
                    model
                        .outlet_label(outlet)
                        .map(str::to_owned)
                        .unwrap_or_else(|| model.node(outlet.node).name.clone())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Which of a graph's outputs a plan returns.
#[derive(Debug, Clone, Copy)]
pub enum Outputs<'a> {
    /// `required` (all must exist) then those of `optional` that exist, in that order.
    Named {
        required: &'a [&'a str],
        optional: &'a [&'a str],
    },
    /// Every declared output, in graph order.
    All,
}

impl Plan {
    /// Loads `path`, whose single f32 input has shape `[N, rest…]`, selecting the outputs
    /// `required` (all must exist) then those of `optional` that exist.
    pub fn load(
        path: &Path,
        rest: &[usize],
        required: &[&str],
        optional: &[&str],
        gpu: bool,
    ) -> Result<Plan, EngineError> {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        if !path.is_file() {
            return Err(EngineError::Model {
                file,
                message: format!("{} does not exist", path.display()),
            });
        }
        let model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(tract_err(&file, "parsing ONNX"))?;
        Plan::build(
            model,
            file,
            rest,
            Outputs::Named { required, optional },
            gpu,
        )
    }

    /// Loads an ONNX graph held in memory (named `file` in errors), on the CPU: the same
    /// plan the engine runs, for checking an export before it is written into a bundle.
    pub fn from_bytes(
        bytes: &[u8],
        file: &str,
        rest: &[usize],
        outputs: Outputs,
    ) -> Result<Plan, EngineError> {
        let model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .map_err(tract_err(file, "parsing ONNX"))?;
        Plan::build(model, file.to_owned(), rest, outputs, false)
    }

    fn build(
        model: InferenceModel,
        file: String,
        rest: &[usize],
        select: Outputs,
        gpu: bool,
    ) -> Result<Plan, EngineError> {
        let declared = output_names(&model);
        let outputs: Vec<String> = match select {
            Outputs::All => declared.clone(),
            Outputs::Named { required, optional } => {
                for r in required {
                    if !declared.iter().any(|d| d == r) {
                        return Err(EngineError::Model {
                            file,
                            message: format!("no output `{r}` (the graph's outputs: {declared:?})"),
                        });
                    }
                }
                let mut outputs: Vec<String> = required.iter().map(|s| s.to_string()).collect();
                outputs.extend(
                    optional
                        .iter()
                        .filter(|o| declared.iter().any(|d| d == *o))
                        .map(|s| s.to_string()),
                );
                outputs
            }
        };
        let mut shape: TVec<TDim> = tvec![1.to_dim()];
        shape.extend(rest.iter().map(|&d| d.to_dim()));
        let model = match select {
            Outputs::All => model,
            Outputs::Named { .. } => model
                .with_outputs_by_name(&outputs)
                .map_err(tract_err(&file, "selecting outputs"))?,
        }
        .with_input_fact(0, f32::fact(shape).into())
        .map_err(tract_err(&file, "setting the input shape"))?;
        let (runnable, backend) = prepare(model, gpu, &file)?;
        Ok(Plan {
            runnable,
            file,
            outputs,
            backend,
            executor: None,
            states: Arc::default(),
        })
    }

    /// The plan running its matrix products on `executor`'s pool (`None`: one thread).
    /// Results are the same either way: the tiles are computed as they are on one thread.
    pub fn with_executor(mut self, executor: Option<Executor>) -> Plan {
        self.executor = executor;
        self
    }

    /// The concrete trailing dimensions (after the batch) of output `ix`, when known.
    pub fn output_dims(&self, ix: usize) -> Option<Vec<usize>> {
        let fact = self.runnable.output_fact(ix).ok()?;
        fact.shape
            .iter()
            .skip(1)
            .map(|d| d.as_i64().map(|v| v as usize))
            .collect()
    }

    pub fn has_output(&self, name: &str) -> bool {
        self.outputs.iter().any(|o| o == name)
    }

    /// Runs a batch: `x` holds `n × Π rest` values; each output is `[n, …]`, the inputs'
    /// outputs one after another (each input runs alone on the batch-of-one plan).
    pub fn run(&self, x: &[f32], n: usize, rest: &[usize]) -> Result<Vec<Output>, EngineError> {
        let err = tract_err(&self.file, "running");
        let len: usize = rest.iter().product();
        if n == 0 || x.len() != n * len {
            return Err(EngineError::Model {
                file: self.file.clone(),
                message: format!(
                    "running: {} input values for a batch of {n} inputs of shape {rest:?}",
                    x.len()
                ),
            });
        }
        let mut shape = vec![1];
        shape.extend_from_slice(rest);
        let run = || -> Result<Vec<Output>, EngineError> {
            let idle = self.states.lock().ok().and_then(|mut s| s.pop());
            let mut state = match idle {
                Some(state) => state,
                None => self.runnable.spawn().map_err(&err)?,
            };
            let mut outputs: Vec<Output> = Vec::new();
            for input in x.chunks(len) {
                let input = Tensor::from_shape(&shape, input).map_err(&err)?;
                let out = state.run(tvec!(input.into())).map_err(&err)?;
                if outputs.is_empty() {
                    outputs = out
                        .iter()
                        .map(|t| {
                            let mut shape = vec![0];
                            shape.extend(t.shape().iter().skip(1));
                            Output {
                                shape,
                                values: Vec::with_capacity(n * t.len()),
                            }
                        })
                        .collect();
                }
                for (o, t) in outputs.iter_mut().zip(&out) {
                    let view = t.to_plain_array_view::<f32>().map_err(&err)?;
                    if view.shape().first() != Some(&1) || view.shape()[1..] != o.shape[1..] {
                        return Err(EngineError::Model {
                            file: self.file.clone(),
                            message: format!(
                                "running: an output of shape {:?} for one input",
                                view.shape()
                            ),
                        });
                    }
                    o.values.extend(view.iter().copied());
                    o.shape[0] += 1;
                }
            }
            // Only a state whose runs all succeeded goes back to the pool.
            if let Ok(mut idle) = self.states.lock() {
                idle.push(state);
            }
            Ok(outputs)
        };
        match &self.executor {
            Some(e) => multithread_tract_scope(e.clone(), run),
            None => run(),
        }
    }
}

impl Plan {
    /// Runs one input (`Π rest` values) `runs` times timing every node of the plan, and
    /// returns each operator kind's mean time per run, slowest first: where a graph spends
    /// its time on this machine. Needs a plan on tract's CPU runtime.
    pub fn profile(
        &self,
        x: &[f32],
        rest: &[usize],
        runs: usize,
    ) -> Result<Vec<OpTime>, EngineError> {
        let fail = |message: String| EngineError::Model {
            file: self.file.clone(),
            message,
        };
        let len: usize = rest.iter().product();
        if runs == 0 || x.len() != len {
            return Err(fail(format!(
                "profiling: {runs} runs of {} input values for one input of shape {rest:?}",
                x.len()
            )));
        }
        let Some(plan) = self.runnable.typed_plan() else {
            return Err(fail(format!(
                "profiling needs a plan on the CPU runtime, not `{}`",
                self.backend
            )));
        };
        let err = tract_err(&self.file, "profiling");
        let mut shape = vec![1];
        shape.extend_from_slice(rest);
        let input = Tensor::from_shape(&shape, x).map_err(&err)?;
        let profile = || -> Result<Vec<OpTime>, EngineError> {
            let mut state = tract_onnx::tract_core::plan::SimpleState::new(plan).map_err(&err)?;
            // Per operator kind: total time and nodes evaluated, over every run.
            let mut per_op: std::collections::HashMap<String, (f64, usize)> = Default::default();
            for _ in 0..runs {
                state
                    .run_plan_with_eval(
                        tvec!(input.clone().into()),
                        |ctx, op_state, node, inputs| {
                            let t = std::time::Instant::now();
                            let out =
                                tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                            let e = per_op.entry(node.op().name().to_string()).or_default();
                            e.0 += t.elapsed().as_secs_f64() * 1e3;
                            e.1 += 1;
                            out
                        },
                    )
                    .map_err(&err)?;
            }
            let mut ops: Vec<OpTime> = per_op
                .into_iter()
                .map(|(op, (ms, n))| OpTime {
                    op,
                    nodes: n / runs,
                    ms: ms / runs as f64,
                })
                .collect();
            ops.sort_by(|a, b| b.ms.total_cmp(&a.ms).then_with(|| a.op.cmp(&b.op)));
            Ok(ops)
        };
        match &self.executor {
            Some(e) => multithread_tract_scope(e.clone(), profile),
            None => profile(),
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn prepare(
    model: InferenceModel,
    _gpu: bool,
    file: &str,
) -> Result<(Arc<dyn Runnable>, String), EngineError> {
    let plan = model
        .into_optimized()
        .map_err(tract_err(file, "optimising"))?
        .into_runnable()
        .map_err(tract_err(file, "planning"))?;
    Ok((Arc::new(plan), "cpu".to_owned()))
}

#[cfg(feature = "cuda")]
fn prepare(
    model: InferenceModel,
    gpu: bool,
    file: &str,
) -> Result<(Arc<dyn Runnable>, String), EngineError> {
    use tract_onnx::tract_core::runtime::runtime_for_name;
    // Linking tract-cuda registers its runtime; keep the crate in the link.
    use tract_cuda as _;
    let name = if gpu { "gpu-or-cpu" } else { "cpu" };
    let rt = runtime_for_name(name)
        .map_err(tract_err(file, "choosing a runtime"))?
        .ok_or_else(|| EngineError::Model {
            file: file.to_owned(),
            message: format!("no tract runtime `{name}`"),
        })?;
    let typed = model
        .into_typed()
        .and_then(|m| m.into_decluttered())
        .map_err(tract_err(file, "typing"))?;
    let runnable = rt
        .prepare(typed)
        .map_err(tract_err(file, "preparing on the chosen runtime"))?;
    Ok((Arc::from(runnable), rt.name().to_string()))
}

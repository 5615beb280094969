//! Values kept in an ONNX Runtime session's memory (CUDA memory on a CUDA device, host
//! memory on the CPU) and graphs run on them through `IoBinding`: the pieces the step
//! loops (`steps.rs`) and training with resident weights (`train::resident`) share.
//!
//! Copies between the host and a device go through a one-node Identity session of
//! harden's own, one per CUDA device, its binding cleared after every copy: ort's
//! `Tensor::to` copies through a process-wide session whose binding keeps the last value
//! it copied (and with it that value's device memory) alive until the next copy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use anyhow::{anyhow, bail, Result};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;

use super::{ort_session, run_failure, OrtLocator};

/// A float tensor in a session's memory (or on the host).
pub type Tensor = ort::value::Tensor<f32>;

pub(crate) fn ort_err(what: &'static str) -> impl Fn(ort::Error) -> anyhow::Error {
    move |e| anyhow!("onnxruntime: {what}: {e}")
}

/// Where bound values live: a CUDA device, or the host. The handles of one CUDA device
/// share its allocator and copy session (one memory arena per device, however many step
/// loops and trainers use it), which live as long as the process: a tensor never
/// outlives the session whose allocator made it.
#[derive(Clone)]
pub struct BoundDevice {
    cuda: Option<Arc<Mutex<CudaMemory>>>,
}

/// A CUDA device's allocator and copy session.
struct CudaMemory {
    alloc: Allocator,
    copier: Session,
}

/// An Identity graph over a float tensor of any shape.
fn identity_model() -> Vec<u8> {
    crate::model::unary_model("Identity", None)
}

impl BoundDevice {
    /// The first device of `loc` (the host when it names no CUDA device).
    pub fn new(loc: &OrtLocator) -> Result<BoundDevice> {
        let Some(&id) = loc.device.cuda_ids().first() else {
            return Ok(BoundDevice { cuda: None });
        };
        static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<Mutex<CudaMemory>>>>> = OnceLock::new();
        let mut devices = DEVICES
            .get_or_init(Default::default)
            .lock()
            .map_err(|_| anyhow!("the device table is poisoned"))?;
        if let Some(d) = devices.get(&id) {
            return Ok(BoundDevice {
                cuda: Some(d.clone()),
            });
        }
        let copier = ort_session(&identity_model(), 1, &loc.on(id))?;
        let info = MemoryInfo::new(
            AllocationDevice::CUDA,
            i32::try_from(id).unwrap_or(0),
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map_err(ort_err("CUDA memory"))?;
        let alloc = Allocator::new(&copier, info).map_err(ort_err("CUDA allocator"))?;
        let d = Arc::new(Mutex::new(CudaMemory { alloc, copier }));
        devices.insert(id, d.clone());
        Ok(BoundDevice { cuda: Some(d) })
    }

    pub fn is_cuda(&self) -> bool {
        self.cuda.is_some()
    }

    fn cuda(&self) -> Result<Option<MutexGuard<'_, CudaMemory>>> {
        self.cuda
            .as_ref()
            .map(|m| {
                m.lock()
                    .map_err(|_| anyhow!("a CUDA device's memory is poisoned"))
            })
            .transpose()
    }

    /// An uninitialised tensor of `shape` on the device (out of memory: the typed
    /// [`super::OutOfMemory`], for `shape[0]` examples).
    pub fn alloc(&self, shape: &[usize]) -> Result<Tensor> {
        let t = match self.cuda()? {
            None => Tensor::new(&Allocator::default(), shape.to_vec()),
            Some(m) => Tensor::new(&m.alloc, shape.to_vec()),
        };
        t.map_err(|e| {
            let msg = e.to_string();
            super::out_of_memory(&msg, shape.first().copied())
                .unwrap_or_else(|| anyhow!("onnxruntime: allocating a bound value: {msg}"))
        })
    }

    /// A tensor of `shape` on the host (for the outputs that come back).
    pub fn host(shape: &[usize]) -> Result<Tensor> {
        Tensor::new(&Allocator::default(), shape.to_vec()).map_err(ort_err("allocating"))
    }

    /// A host tensor holding `values` (for inputs: binding it to a CUDA session copies it
    /// to the device).
    pub fn host_input(values: &[f32], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_array((shape.to_vec(), values.to_vec().into_boxed_slice()))
            .map_err(ort_err("an input"))
    }

    /// A tensor of `shape` on the device holding `values`.
    pub fn upload(&self, values: &[f32], shape: &[usize]) -> Result<Tensor> {
        let mut t = self.alloc(shape)?;
        self.write(&mut t, values)?;
        Ok(t)
    }

    /// Overwrites the device tensor `t` with `values`.
    pub fn write(&self, t: &mut Tensor, values: &[f32]) -> Result<()> {
        let shape: Vec<usize> = t.shape().iter().map(|d| *d as usize).collect();
        if shape.iter().product::<usize>() != values.len() {
            bail!(
                "{} values do not fill a bound value of shape {shape:?}",
                values.len()
            );
        }
        match self.cuda()? {
            None => {
                let (_, data) = t
                    .try_extract_tensor_mut()
                    .map_err(ort_err("writing a bound value"))?;
                data.copy_from_slice(values);
            }
            Some(mut m) => {
                let src = BoundDevice::host_input(values, &shape)?;
                copy(&mut m.copier, &src, t)?;
            }
        }
        Ok(())
    }

    /// The values of the tensor `t` (from device memory on CUDA).
    pub fn download(&self, t: &Tensor) -> Result<Vec<f32>> {
        match self.cuda()? {
            None => Ok(t
                .try_extract_tensor()
                .map_err(ort_err("reading a bound value"))?
                .1
                .to_vec()),
            Some(mut m) => {
                let shape: Vec<usize> = t.shape().iter().map(|d| *d as usize).collect();
                let mut h = BoundDevice::host(&shape)?;
                copy(&mut m.copier, t, &mut h)?;
                Ok(h.try_extract_tensor()
                    .map_err(ort_err("reading"))?
                    .1
                    .to_vec())
            }
        }
    }
}

/// One run of the copy session from `src` into `dst`, the binding dropped afterwards.
fn copy(session: &mut Session, src: &Tensor, dst: &mut Tensor) -> Result<()> {
    let mut binding = session.create_binding().map_err(ort_err("binding"))?;
    binding
        .bind_input("x", src)
        .map_err(ort_err("copy input"))?;
    binding
        .bind_output("y", dst)
        .map_err(ort_err("copy output"))?;
    session
        .run_binding(&binding)
        .map_err(|e| run_failure(&e.to_string(), None))?;
    binding
        .synchronize_outputs()
        .map_err(ort_err("synchronising a copy"))?;
    binding.clear();
    Ok(())
}

/// A graph opened on one device whose inputs and outputs are bound by name to values on
/// the device or the host, every input and output named in each run.
pub struct BoundGraph {
    session: Session,
    cuda: bool,
}

impl BoundGraph {
    /// Opens `bytes` with `threads` threads on the first device of `loc`.
    pub fn open(bytes: &[u8], threads: usize, loc: &OrtLocator) -> Result<BoundGraph> {
        Ok(BoundGraph {
            session: ort_session(bytes, threads, loc)?,
            cuda: !loc.device.cuda_ids().is_empty(),
        })
    }

    pub fn input_names(&self) -> Vec<String> {
        self.session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect()
    }

    pub fn output_names(&self) -> Vec<String> {
        self.session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect()
    }

    /// One run, `inputs` and `outputs` bound by name (a run on `rows` examples, for the
    /// out-of-memory message); the outputs written where they are bound, synchronised.
    pub fn run(
        &mut self,
        inputs: &[(&str, &Tensor)],
        outputs: &mut [(&str, &mut Tensor)],
        rows: Option<usize>,
    ) -> Result<()> {
        super::simulated_failure(rows.unwrap_or(0))?;
        let mut binding = self.session.create_binding().map_err(ort_err("binding"))?;
        for (name, v) in inputs {
            binding
                .bind_input(*name, *v)
                .map_err(|e| anyhow!("onnxruntime: binding input '{name}': {e}"))?;
        }
        if self.cuda {
            binding
                .synchronize_inputs()
                .map_err(ort_err("synchronising the inputs"))?;
        }
        for (name, v) in outputs.iter_mut() {
            binding
                .bind_output(*name, &mut **v)
                .map_err(|e| anyhow!("onnxruntime: binding output '{name}': {e}"))?;
        }
        self.session
            .run_binding(&binding)
            .map_err(|e| run_failure(&e.to_string(), rows))?;
        if self.cuda {
            binding
                .synchronize_outputs()
                .map_err(ort_err("synchronising"))?;
        }
        binding.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values written to and read back from bound memory are the same values (host
    /// memory here; on CUDA the same calls copy through the device).
    #[test]
    fn bound_values_round_trip() {
        let Some(lib) = std::env::var_os("ORT_DYLIB_PATH") else {
            eprintln!("skipping: ORT_DYLIB_PATH is not set");
            return;
        };
        let loc = OrtLocator::standard(Some(lib.into()), None, None);
        if super::super::ort_environment(&loc).is_err() {
            eprintln!("skipping: ONNX Runtime does not load");
            return;
        }
        let dev = BoundDevice::new(&loc).unwrap();
        let values: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let mut t = dev.upload(&values, &[2, 3, 4]).unwrap();
        assert_eq!(dev.download(&t).unwrap(), values);
        let other: Vec<f32> = values.iter().map(|v| -v).collect();
        dev.write(&mut t, &other).unwrap();
        assert_eq!(dev.download(&t).unwrap(), other);
        assert!(dev.write(&mut t, &other[..5]).is_err());
        // The copy graph itself, run as a bound graph on the host.
        let mut g = BoundGraph::open(&identity_model(), 1, &loc).unwrap();
        let src = BoundDevice::host_input(&values, &[4, 6]).unwrap();
        let mut dst = BoundDevice::host(&[4, 6]).unwrap();
        g.run(&[("x", &src)], &mut [("y", &mut dst)], None).unwrap();
        assert_eq!(dev.download(&dst).unwrap(), values);
    }
}

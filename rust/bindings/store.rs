//! `fot_mem._core.Store`: a thread-safe handle on a `MemoryStore`. The Pythonic face
//! (`fot_mem.MemoryStore`, `fot_mem.Document`) wraps it in `python/fot_mem/store.py`.

use std::path::PathBuf;
use std::sync::Mutex;

use numpy::PyArrayDyn;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::arrays::{check_dim, input, input_i64, output};
use super::errors::{run, to_py};
use super::search::{self, Scored};
use super::{hnsw, views};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::store::{MemoryStore, Part, StoreConfig, DEFAULT_CHUNK_TOKENS};

type Arrays<'py> = (Bound<'py, PyArrayDyn<f32>>, Bound<'py, PyArrayDyn<f32>>);

#[pyclass(module = "fot_mem._core", frozen)]
pub struct Store {
    inner: Mutex<Option<MemoryStore>>,
    path: PathBuf,
    readonly: bool,
    config: StoreConfig,
}

fn count(name: &str, v: i64) -> Result<u32> {
    u32::try_from(v)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::Value(format!("{name} must be a positive integer, got {v}")))
}

fn layer_index(layer: i64, layers: &[u32]) -> Result<u32> {
    u32::try_from(layer).map_err(|_| Error::UnknownLayer {
        layer,
        layers: layers.to_vec(),
    })
}

impl Store {
    fn wrap(store: MemoryStore) -> Self {
        Store {
            path: store.path().to_owned(),
            readonly: store.is_readonly(),
            config: store.config().clone(),
            inner: Mutex::new(Some(store)),
        }
    }

    /// Runs `f` on the open store with the GIL released.
    fn with<T, F>(&self, py: Python<'_>, f: F) -> PyResult<T>
    where
        T: Send,
        F: FnOnce(&mut MemoryStore) -> Result<T> + Send,
    {
        run(py, || {
            let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let store = guard
                .as_mut()
                .ok_or_else(|| Error::Closed(self.path.clone()))?;
            f(store)
        })
    }

    fn layer(&self, py: Python<'_>, layer: i64) -> PyResult<u32> {
        layer_index(layer, &self.config.layers).map_err(|e| to_py(py, e))
    }

    /// `(first_token_id, view)` per chunk of one kv head's keys or values (see `key_views`).
    fn views<'py>(
        &self,
        py: Python<'py>,
        doc: &str,
        layer: i64,
        kv_head: usize,
        part: Part,
    ) -> PyResult<Vec<(u64, Bound<'py, PyAny>)>> {
        let layer = self.layer(py, layer)?;
        let views = self.with(py, |s| s.views(doc, layer, kv_head, part))?;
        let dim = part.dim(&self.config);
        views
            .into_iter()
            .map(|v| Ok((v.first_id, views::key_view(py, v, dim, self.config.dtype)?)))
            .collect()
    }
}

#[pymethods]
impl Store {
    #[staticmethod]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    #[pyo3(signature = (path, layers, kv_heads, head_dim, value_dim=None, dtype="float32", chunk_tokens=DEFAULT_CHUNK_TOKENS as i64, hnsw=None))]
    fn create(
        py: Python<'_>,
        path: PathBuf,
        layers: Vec<i64>,
        kv_heads: i64,
        head_dim: i64,
        value_dim: Option<i64>,
        dtype: &str,
        chunk_tokens: i64,
        hnsw: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let dtype = dtype.to_owned();
        let hnsw = match hnsw {
            Some(d) => Some(
                hnsw::config(d, count("chunk_tokens", chunk_tokens).unwrap_or(1))
                    .map_err(|e| to_py(py, e))?,
            ),
            None => None,
        };
        let store = run(py, move || {
            let layers = layers
                .iter()
                .map(|&l| {
                    u32::try_from(l).map_err(|_| {
                        Error::Value(format!("memory layer indices must be >= 0, got {l}"))
                    })
                })
                .collect::<Result<Vec<u32>>>()?;
            let head_dim = count("head_dim", head_dim)?;
            let config = StoreConfig {
                layers,
                kv_heads: count("kv_heads", kv_heads)?,
                head_dim,
                value_dim: value_dim.map_or(Ok(head_dim), |v| count("value_dim", v))?,
                dtype: Dtype::parse(&dtype)?,
                chunk_tokens: count("chunk_tokens", chunk_tokens)?,
                hnsw,
            };
            MemoryStore::create(&path, config)
        })?;
        Ok(Store::wrap(store))
    }

    #[staticmethod]
    #[pyo3(signature = (path, readonly=false, verify_reads=false))]
    fn open(py: Python<'_>, path: PathBuf, readonly: bool, verify_reads: bool) -> PyResult<Self> {
        let store = run(py, move || {
            MemoryStore::open(&path, readonly).map(|s| s.verify_reads(verify_reads))
        })?;
        Ok(Store::wrap(store))
    }

    /// Closes the handle (releasing the writer lock); later calls raise StoreClosedError.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        run(py, || {
            let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(mut s) = guard.take() {
                // Finish the indexes this handle started: a later reader should not have to
                // scan spans that were sealed here.
                let built = s.wait_for_indexes();
                s.flush()?;
                built?;
            }
            Ok(())
        })
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    #[getter]
    fn readonly(&self) -> bool {
        self.readonly
    }

    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.config;
        let d = PyDict::new(py);
        d.set_item("layers", c.layers.clone())?;
        d.set_item("kv_heads", c.kv_heads)?;
        d.set_item("head_dim", c.head_dim)?;
        d.set_item("value_dim", c.value_dim)?;
        d.set_item("dtype", c.dtype.name())?;
        d.set_item("chunk_tokens", c.chunk_tokens)?;
        match &c.hnsw {
            Some(h) => d.set_item("hnsw", hnsw::config_dict(py, h)?)?,
            None => d.set_item("hnsw", py.None())?,
        }
        Ok(d)
    }

    fn documents(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.with(py, |s| s.documents())
    }

    fn contains(&self, py: Python<'_>, doc: &str) -> PyResult<bool> {
        self.with(py, |s| s.contains(doc))
    }

    fn delete_document(&self, py: Python<'_>, doc: &str) -> PyResult<bool> {
        self.with(py, |s| s.delete_document(doc))
    }

    fn length(&self, py: Python<'_>, doc: &str, layer: i64) -> PyResult<u64> {
        let layer = self.layer(py, layer)?;
        self.with(py, |s| s.length(doc, layer))
    }

    fn append(
        &self,
        py: Python<'_>,
        doc: &str,
        layer: i64,
        keys: &Bound<'_, PyAny>,
        values: &Bound<'_, PyAny>,
    ) -> PyResult<u64> {
        let layer = self.layer(py, layer)?;
        let c = &self.config;
        let k = input(keys, "keys", 3)?;
        check_dim(py, "keys", &k.shape, 1, "kv_heads", c.kv_heads)?;
        check_dim(py, "keys", &k.shape, 2, "head_dim", c.head_dim)?;
        let v = input(values, "values", 3)?;
        check_dim(py, "values", &v.shape, 1, "kv_heads", c.kv_heads)?;
        check_dim(py, "values", &v.shape, 2, "value_dim", c.value_dim)?;
        if k.shape[0] != v.shape[0] {
            return Err(to_py(
                py,
                Error::Shape(format!(
                    "keys have {} tokens but values have {}",
                    k.shape[0], v.shape[0]
                )),
            ));
        }
        self.with(py, |s| s.append(doc, layer, k.elements(), v.elements()))
    }

    #[pyo3(signature = (docs, layer, queries, k, backend="exact", ef=None))]
    #[allow(clippy::too_many_arguments)] // Python keyword arguments
    fn search<'py>(
        &self,
        py: Python<'py>,
        docs: Vec<String>,
        layer: i64,
        queries: &Bound<'py, PyAny>,
        k: i64,
        backend: &str,
        ef: Option<i64>,
    ) -> PyResult<Scored<'py>> {
        let layer = self.layer(py, layer)?;
        let request = search::prepare(py, &self.config, docs, queries, k, backend, ef)?;
        let res = self.with(py, |s| request.run(s, layer))?;
        request.output(py, res)
    }

    fn gather<'py>(
        &self,
        py: Python<'py>,
        doc: &str,
        layer: i64,
        ids: &Bound<'py, PyAny>,
    ) -> PyResult<Arrays<'py>> {
        let layer = self.layer(py, layer)?;
        let (ids, shape) = input_i64(ids, "ids", 3)?;
        let c = &self.config;
        let (keys, values) = self.with(py, |s| s.gather(doc, layer, &ids, shape[1], shape[2]))?;
        Ok((
            output(
                py,
                keys,
                &[shape[0], shape[1], shape[2], c.head_dim as usize],
            )?,
            output(
                py,
                values,
                &[shape[0], shape[1], shape[2], c.value_dim as usize],
            )?,
        ))
    }

    fn read<'py>(
        &self,
        py: Python<'py>,
        doc: &str,
        layer: i64,
        start: u64,
        stop: u64,
    ) -> PyResult<Arrays<'py>> {
        let layer = self.layer(py, layer)?;
        let c = &self.config;
        let (keys, values) = self.with(py, |s| s.read(doc, layer, start, stop))?;
        let n = (stop - start) as usize;
        Ok((
            output(py, keys, &[n, c.kv_heads as usize, c.head_dim as usize])?,
            output(py, values, &[n, c.kv_heads as usize, c.value_dim as usize])?,
        ))
    }

    /// Read-only, zero-copy numpy views `[rows, head_dim]` of the committed keys of `kv_head`,
    /// one per chunk, as `(first_token_id, array)`; dtype float32, float16, or uint16 holding
    /// bfloat16 bits. Each view keeps its chunk mapped, even after `close()`.
    fn key_views<'py>(
        &self,
        py: Python<'py>,
        doc: &str,
        layer: i64,
        kv_head: usize,
    ) -> PyResult<Vec<(u64, Bound<'py, PyAny>)>> {
        self.views(py, doc, layer, kv_head, Part::Keys)
    }

    /// `key_views` of the values, `[rows, value_dim]`.
    fn value_views<'py>(
        &self,
        py: Python<'py>,
        doc: &str,
        layer: i64,
        kv_head: usize,
    ) -> PyResult<Vec<(u64, Bound<'py, PyAny>)>> {
        self.views(py, doc, layer, kv_head, Part::Values)
    }

    /// The directory holding a document-layer's files (unique per incarnation of the document),
    /// or None when the document does not exist.
    fn layer_path(&self, py: Python<'_>, doc: &str, layer: i64) -> PyResult<Option<String>> {
        let layer = self.layer(py, layer)?;
        let path = self.with(py, |s| s.layer_path(doc, layer))?;
        Ok(path.map(|p| p.to_string_lossy().into_owned()))
    }

    #[pyo3(signature = (doc=None))]
    fn nbytes(&self, py: Python<'_>, doc: Option<&str>) -> PyResult<u64> {
        self.with(py, |s| s.nbytes(doc))
    }

    /// Queues index builds for sealed spans that lack one; returns how many were queued.
    fn build_indexes(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |s| s.build_indexes())
    }

    /// Waits for queued index builds; returns the builder's statistics.
    fn wait_for_indexes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = self.with(py, |s| s.wait_for_indexes())?;
        hnsw::stats_dict(py, &st)
    }

    /// The builder's statistics so far.
    fn index_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = self.with(py, |s| Ok(s.index_stats()))?;
        hnsw::stats_dict(py, &st)
    }

    /// Tokens of a document-layer covered by hnsw graphs.
    fn indexed_tokens(&self, py: Python<'_>, doc: &str, layer: i64) -> PyResult<u64> {
        let layer = self.layer(py, layer)?;
        self.with(py, |s| s.indexed_tokens(doc, layer))
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |s| s.flush())
    }

    fn refresh(&self, py: Python<'_>) -> PyResult<()> {
        self.with(py, |s| s.refresh())
    }
}

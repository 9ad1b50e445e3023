//! A restricted unpickler for PyTorch state dicts (`data.pkl` of a `torch.save` zip).
//!
//! It builds plain values and never calls anything: the only globals it accepts are the few a
//! state dict needs (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter` and the float storage classes), and it interprets those
//! itself. Any other global is refused before anything else happens.
use anyhow::{anyhow, bail, Result};
use safetensors::Dtype;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A global the unpickler knows how to interpret.
#[derive(Clone, Debug, PartialEq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(Dtype),
}

/// A tensor as `_rebuild_tensor_v2` describes it: a view into a storage file of the zip.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub dtype: Dtype,
    /// Name of the storage under `<archive>/data/`.
    pub storage_key: String,
    /// Number of elements in the storage.
    pub storage_numel: usize,
    /// Offset into the storage, in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// Containers are shared, as in Python: copying a value (BINGET) never deep-copies.
    Tuple(Rc<Seq<Value>>),
    List(Rc<RefCell<Seq<Value>>>),
    /// Dicts keep insertion order (as Python's do).
    Dict(Rc<RefCell<Seq<(Value, Value)>>>),
    Global(Global),
    /// A persistent id: ('storage', storage class, key, location, numel).
    Storage {
        dtype: Dtype,
        key: String,
        numel: usize,
    },
    Tensor(TensorRef),
}

/// Container items with the nesting depth of the container (kept small, see `MAX_DEPTH`, so
/// that dropping or walking a hostile pickle's values cannot overflow the stack).
#[derive(Debug, Default)]
pub struct Seq<T> {
    pub items: Vec<T>,
    depth: usize,
}

/// Nesting limit: a state dict needs about 5 levels.
const MAX_DEPTH: usize = 100;

impl<T> Seq<T> {
    fn new(items: Vec<T>, depth: usize) -> Self {
        Seq { items, depth }
    }
}

impl Value {
    /// Nesting depth (0 for scalars); `MAX_DEPTH + 1` if it cannot be read.
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(t) => t.depth,
            Value::List(l) => l.try_borrow().map(|l| l.depth).unwrap_or(MAX_DEPTH + 1),
            Value::Dict(d) => d.try_borrow().map(|d| d.depth).unwrap_or(MAX_DEPTH + 1),
            _ => 0,
        }
    }

    /// The value of `key` in a dict with string keys.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => {
                let d = d.try_borrow().ok()?;
                d.items
                    .iter()
                    .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                    .map(|(_, v)| v.clone())
            }
            _ => None,
        }
    }

    /// (key, value) pairs of a dict with string keys.
    pub fn str_items(&self) -> Result<Vec<(String, Value)>> {
        let Value::Dict(d) = self else {
            bail!("expected a dict, found {}", self.kind())
        };
        let d = d.try_borrow().map_err(|_| anyhow!("dict is being modified"))?;
        d.items
            .iter()
            .map(|(k, v)| match k {
                Value::Str(s) => Ok((s.clone(), v.clone())),
                other => Err(anyhow!("expected a string key, found {}", other.kind())),
            })
            .collect()
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage { .. } => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// Unpickles `data`. Every error message starts with `origin` (the file it came from).
pub fn load(data: &[u8], origin: &str) -> Result<Value> {
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    m.run().map_err(|e| match e {
        Error::Forbidden(name) => anyhow!(
            "{origin}: pickle asks for forbidden global '{name}'; refusing to load (only PyTorch state dicts are supported)"
        ),
        Error::Bad(msg) => anyhow!("{origin}: bad pickle: {msg}"),
    })
}

enum Error {
    Forbidden(String),
    Bad(String),
}

type R<T> = std::result::Result<T, Error>;

fn bad<T>(msg: impl Into<String>) -> R<T> {
    Err(Error::Bad(msg.into()))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let data: &'a [u8] = self.data;
        match self.pos.checked_add(n).and_then(|end| data.get(self.pos..end)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => bad(format!(
                "truncated: needs {n} bytes at offset {} of {}",
                self.pos,
                data.len()
            )),
        }
    }
    fn arr<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn line(&mut self) -> R<String> {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return bad(format!("truncated: unterminated line at offset {}", self.pos));
        };
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }
    fn pop(&mut self) -> R<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return bad(format!("stack underflow (past a MARK) at offset {}", self.pos));
        }
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => bad(format!("stack underflow at offset {}", self.pos)),
        }
    }
    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let Some(m) = self.marks.pop() else {
            return bad(format!("no MARK at offset {}", self.pos));
        };
        if m > self.stack.len() {
            return bad("corrupt MARK");
        }
        Ok(self.stack.split_off(m))
    }
    fn top(&mut self) -> R<&mut Value> {
        match self.stack.last_mut() {
            Some(v) => Ok(v),
            None => bad(format!("stack underflow at offset {}", self.pos)),
        }
    }
    fn push_str(&mut self, n: usize) -> R<()> {
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => {
                self.stack.push(Value::Str(s.to_string()));
                Ok(())
            }
            Err(_) => bad(format!("string is not UTF-8 at offset {}", self.pos)),
        }
    }
    fn memo_put(&mut self, key: u32) -> R<()> {
        let v = match self.stack.last() {
            Some(v) => v.clone(),
            None => return bad("memo put on an empty stack"),
        };
        self.memo.insert(key, v);
        Ok(())
    }
    fn memo_get(&mut self, key: u32) -> R<()> {
        match self.memo.get(&key) {
            Some(v) => {
                self.stack.push(v.clone());
                Ok(())
            }
            None => bad(format!("memo key {key} not found")),
        }
    }

    fn run(&mut self) -> R<Value> {
        loop {
            let at = self.pos;
            let op = self.arr::<1>()?[0];
            match op {
                0x80 => {
                    // PROTO
                    let p = self.arr::<1>()?[0];
                    if p > 5 {
                        return bad(format!("unsupported pickle protocol {p}"));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: length only, the data follows inline
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self
                    .stack
                    .push(Value::Dict(Rc::new(RefCell::new(Seq::new(Vec::new(), 1))))),
                b']' => self
                    .stack
                    .push(Value::List(Rc::new(RefCell::new(Seq::new(Vec::new(), 1))))),
                b')' => self.stack.push(Value::Tuple(Rc::new(Seq::new(Vec::new(), 1)))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(tuple(items)?);
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.stack.push(tuple(items)?);
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let depth = nested_depth(items.iter())?;
                    self.stack
                        .push(Value::List(Rc::new(RefCell::new(Seq::new(items, depth)))));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let depth = nested_depth(items.iter())?;
                    let pairs = pairs(items)?;
                    self.stack
                        .push(Value::Dict(Rc::new(RefCell::new(Seq::new(pairs, depth)))));
                }
                b'a' => {
                    let v = self.pop()?;
                    append(self.top()?, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    append(self.top()?, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    set_items(self.top()?, vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items)?;
                    set_items(self.top()?, pairs)?;
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.arr()?) as usize;
                    self.push_str(n)?;
                }
                0x8c => {
                    let n = self.arr::<1>()?[0] as usize;
                    self.push_str(n)?;
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.arr()?);
                    let n = usize::try_from(n).map_err(|_| Error::Bad("string too long".into()))?;
                    self.push_str(n)?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.arr()?);
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.arr::<1>()?[0];
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.arr()?);
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    // LONG1: little-endian two's complement, up to 8 bytes supported
                    let n = self.arr::<1>()?[0] as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return bad(format!("integer of {n} bytes is too large at offset {at}"));
                    }
                    let mut v: i64 = 0;
                    for (i, &byte) in b.iter().enumerate() {
                        v |= (byte as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.arr()?);
                    self.stack.push(Value::Float(v));
                }
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'N' => self.stack.push(Value::None),
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = global(&module, &name)?;
                    self.stack.push(Value::Global(g));
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return bad(format!("STACK_GLOBAL without strings at offset {at}"));
                    };
                    let g = global(&module, &name)?;
                    self.stack.push(Value::Global(g));
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = persistent_load(pid)?;
                    self.stack.push(v);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = reduce(callable, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD: only the `_metadata` state of an OrderedDict state dict; it is dropped.
                    let _state = self.pop()?;
                    if !matches!(self.top()?, Value::Dict(_)) {
                        return bad(format!("BUILD on a {} at offset {at}", self.top()?.kind()));
                    }
                }
                b'q' => {
                    let k = self.arr::<1>()?[0] as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.arr()?);
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32; // MEMOIZE
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.arr::<1>()?[0] as u32;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.arr()?);
                    self.memo_get(k)?;
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                other => return bad(format!("unsupported opcode 0x{other:02x} at offset {at}")),
            }
        }
    }
}

fn global(module: &str, name: &str) -> R<Global> {
    Ok(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch", "HalfStorage") => Global::Storage(Dtype::F16),
        ("torch", "FloatStorage") => Global::Storage(Dtype::F32),
        ("torch", "BFloat16Storage") => Global::Storage(Dtype::BF16),
        (m, n) => return Err(Error::Forbidden(format!("{m}.{n}"))),
    })
}

/// Depth of a container holding `items`, or an error past `MAX_DEPTH`.
fn nested_depth<'v>(items: impl Iterator<Item = &'v Value>) -> R<usize> {
    let depth = 1 + items.map(Value::depth).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        return bad(format!("values nested deeper than {MAX_DEPTH} levels"));
    }
    Ok(depth)
}

fn tuple(items: Vec<Value>) -> R<Value> {
    let depth = nested_depth(items.iter())?;
    Ok(Value::Tuple(Rc::new(Seq::new(items, depth))))
}

fn pairs(items: Vec<Value>) -> R<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return bad("odd number of items for a dict");
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn append(target: &mut Value, items: Vec<Value>) -> R<()> {
    match target {
        Value::List(l) => {
            // Depths are read before borrowing: an item may be this very list.
            let depth = nested_depth(items.iter())?;
            let Ok(mut l) = l.try_borrow_mut() else {
                return bad("list is in use");
            };
            l.depth = l.depth.max(depth);
            l.items.extend(items);
            Ok(())
        }
        other => bad(format!("APPEND to a {}", other.kind())),
    }
}

fn set_items(target: &mut Value, items: Vec<(Value, Value)>) -> R<()> {
    let Value::Dict(d) = target else {
        return bad(format!("SETITEM on a {}", target.kind()));
    };
    // Depths are read before borrowing: a value may be this very dict.
    let depth = nested_depth(items.iter().flat_map(|(k, v)| [k, v]))?;
    let Ok(mut d) = d.try_borrow_mut() else {
        return bad("dict is in use");
    };
    d.depth = d.depth.max(depth);
    let d = &mut d.items;
    for (k, v) in items {
        // Python semantics: a repeated key replaces the value in place.
        let existing = match &k {
            Value::Str(s) => d.iter().position(|(kk, _)| matches!(kk, Value::Str(t) if t == s)),
            Value::Int(i) => d.iter().position(|(kk, _)| matches!(kk, Value::Int(j) if j == i)),
            _ => None,
        };
        match existing {
            Some(i) => d[i].1 = v,
            None => d.push((k, v)),
        }
    }
    Ok(())
}

fn as_usize(v: &Value, what: &str) -> R<usize> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        other => bad(format!("{what}: expected a non-negative int, found {}", other.kind())),
    }
}

fn usize_tuple(v: &Value, what: &str) -> R<Vec<usize>> {
    match v {
        Value::Tuple(t) => t.items.iter().map(|i| as_usize(i, what)).collect(),
        other => bad(format!("{what}: expected a tuple, found {}", other.kind())),
    }
}

/// `('storage', <storage class>, key, location, numel)`
fn persistent_load(pid: Value) -> R<Value> {
    let Value::Tuple(t) = pid else {
        return bad(format!("persistent id is a {}", pid.kind()));
    };
    match t.items.as_slice() {
        [Value::Str(tag), Value::Global(Global::Storage(dtype)), Value::Str(key), _location, numel]
            if tag == "storage" =>
        {
            Ok(Value::Storage {
                dtype: *dtype,
                key: key.clone(),
                numel: as_usize(numel, "storage size")?,
            })
        }
        _ => bad("unsupported persistent id (expected ('storage', torch.<T>Storage, key, location, numel))"),
    }
}

fn reduce(callable: Value, args: Value) -> R<Value> {
    let Value::Global(g) = callable else {
        return bad(format!("REDUCE calls a {}", callable.kind()));
    };
    let Value::Tuple(args) = args else {
        return bad("REDUCE arguments are not a tuple");
    };
    let args = &args.items;
    match g {
        Global::OrderedDict if args.is_empty() => Ok(Value::Dict(Rc::new(RefCell::new(Seq::new(Vec::new(), 1))))),
        Global::RebuildTensorV2 => {
            // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
            let [Value::Storage { dtype, key, numel }, offset, size, stride, ..] = args.as_slice() else {
                return bad("_rebuild_tensor_v2 with unexpected arguments");
            };
            let shape = usize_tuple(size, "tensor size")?;
            let stride = usize_tuple(stride, "tensor stride")?;
            if shape.len() != stride.len() {
                return bad("tensor size and stride differ in length");
            }
            Ok(Value::Tensor(TensorRef {
                dtype: *dtype,
                storage_key: key.clone(),
                storage_numel: *numel,
                offset: as_usize(offset, "storage offset")?,
                shape,
                stride,
            }))
        }
        Global::RebuildParameter => match args.first() {
            Some(t @ Value::Tensor(_)) => Ok(t.clone()),
            _ => bad("_rebuild_parameter without a tensor"),
        },
        other => bad(format!("cannot call {other:?} with these arguments")),
    }
}

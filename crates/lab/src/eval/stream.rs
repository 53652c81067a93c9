//! Reading an evaluation stream: a CSV with a header `f0,…,f{d−1},label`, one sample
//! per line, labels `0..K−1`. Every problem is reported with its line number, before
//! anything is sent to a server.

use std::path::Path;

use anyhow::{Context, bail};

/// A stream held in memory (the streams of QUALITY.md are a few MB).
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    pub dim: usize,
    /// `samples × dim`, row-major.
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
}

impl Stream {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }

    /// One more than the largest label.
    pub fn classes(&self) -> usize {
        self.labels.iter().max().map_or(0, |&m| m as usize + 1)
    }
}

/// Reads and checks `path`.
pub fn read(path: &Path) -> anyhow::Result<Stream> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text).with_context(|| format!("{} is not a valid stream", path.display()))
}

/// Parses the CSV text of a stream.
pub fn parse(text: &str) -> anyhow::Result<Stream> {
    let mut lines = text.lines().enumerate();
    let Some((_, header)) = lines.next() else {
        bail!("the file is empty: expected a header f0,…,f{{d-1}},label");
    };
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let dim = columns.len().saturating_sub(1);
    if dim == 0 || columns.last() != Some(&"label") {
        bail!("line 1: the header must be f0,…,f{{d-1}},label, found {header:?}");
    }
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != dim + 1 {
            bail!(
                "line {n}: {} fields, expected {} ({dim} features and a label)",
                cells.len(),
                dim + 1
            );
        }
        for (j, cell) in cells[..dim].iter().enumerate() {
            let v: f32 = cell
                .parse()
                .with_context(|| format!("line {n}: feature f{j} is not a number: {cell:?}"))?;
            if !v.is_finite() {
                bail!("line {n}: feature f{j} is not finite: {cell:?}");
            }
            features.push(v);
        }
        let label = cells[dim];
        labels.push(label.parse::<u32>().with_context(|| {
            format!("line {n}: the label must be an integer 0..K-1, found {label:?}")
        })?);
    }
    if labels.is_empty() {
        bail!("no samples after the header");
    }
    Ok(Stream {
        dim,
        features,
        labels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_and_classes() {
        let s = parse("f0,f1,label\n1.5,-2,0\n3,4e3,2\n\n").unwrap();
        assert_eq!(s.dim, 2);
        assert_eq!(s.len(), 2);
        assert_eq!(s.row(1), &[3.0, 4000.0]);
        assert_eq!(s.labels, vec![0, 2]);
        assert_eq!(s.classes(), 3);
    }

    #[test]
    fn every_problem_names_its_line() {
        let cases = [
            ("", "empty"),
            ("f0,f1\n1,2\n", "line 1: the header"),
            ("f0,label\n", "no samples"),
            ("f0,label\n1,0\n1,2,0\n", "line 3: 3 fields, expected 2"),
            ("f0,label\nx,0\n", "line 2: feature f0 is not a number"),
            ("f0,label\nNaN,0\n", "line 2: feature f0 is not finite"),
            ("f0,label\ninf,0\n", "line 2: feature f0 is not finite"),
            ("f0,label\n1,-1\n", "line 2: the label must be an integer"),
            ("f0,label\n1,0.5\n", "line 2: the label must be an integer"),
        ];
        for (text, expected) in cases {
            let e = format!("{:#}", parse(text).unwrap_err());
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }
}

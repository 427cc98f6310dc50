//! Random forest on linfa-trees CART trees (Gini). linfa-trees has no per-split feature
//! sampling and linfa-ensemble only votes hard labels, so the bagging is here, as
//! linfa-ensemble does it: each tree sees a bootstrap sample of the rows and a random
//! subset of the columns, drawn from its own seeded ChaCha8 stream (trees fit in
//! parallel; the result does not depend on the thread count).
//!
//! P(label 1) is the mean over trees of the leaf's class-1 fraction (not a hard vote):
//! linfa's leaves only hold the modal class, so each tree's bootstrap rows are routed
//! through it again and counted per leaf. Routing uses linfa's prediction rule
//! `x < threshold` (training splits with `<=`; they differ only for a row exactly at a
//! threshold), and so does the export, `BRANCH_LT`.

use super::logistic::normalise;
use super::{StackError, check_labels, finish, rows_matrix};
use crate::onnx::{Graph, Model, NodeMode, TreeEnsembleClassifier};
use linfa::prelude::*;
use linfa_trees::{DecisionTree, TreeNode};
use ndarray::{Array1, Array2};
use rand::SeedableRng;
use rand::{Rng, seq::index};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tirp_firmware::ensemble::STACKER_INPUT;

#[derive(Debug, Clone, PartialEq)]
pub struct ForestConfig {
    pub trees: usize,
    /// Depth limit of each tree (`None`: grow until pure or too small).
    pub max_depth: Option<usize>,
    /// A node with fewer rows than this is not split.
    pub min_samples_split: usize,
    /// A split must leave at least this many rows on each side.
    pub min_samples_leaf: usize,
    /// Fraction of the columns each tree sees (at least one column); 1.0 is plain bagging.
    pub max_features: f32,
    pub seed: u64,
}

impl Default for ForestConfig {
    fn default() -> Self {
        ForestConfig {
            trees: 200,
            max_depth: Some(6),
            min_samples_split: 20,
            min_samples_leaf: 10,
            max_features: 0.5,
            seed: 0,
        }
    }
}

impl ForestConfig {
    fn validate(&self) -> Result<(), StackError> {
        let bad = |m: String| Err(StackError::Config(m));
        if self.trees == 0 {
            return bad("a forest needs at least 1 tree".into());
        }
        if self.max_depth == Some(0) {
            return bad("max_depth must be ≥ 1".into());
        }
        if self.min_samples_split < 2 {
            return bad(format!(
                "min_samples_split {} must be ≥ 2",
                self.min_samples_split
            ));
        }
        if self.min_samples_leaf == 0 {
            return bad("min_samples_leaf must be ≥ 1".into());
        }
        if !(self.max_features > 0.0 && self.max_features <= 1.0) {
            return bad(format!(
                "max_features {} must be in (0, 1]",
                self.max_features
            ));
        }
        Ok(())
    }
}

/// One flattened tree, nodes in pre-order (node 0 is the root).
#[derive(Debug, Clone, PartialEq)]
struct Tree {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// `x[feature] < threshold` goes to `left`.
    Split {
        feature: usize,
        threshold: f32,
        left: usize,
        right: usize,
    },
    /// This leaf's contribution to each class's probability: its class fraction divided
    /// by the number of trees, rounded to f32 once, so that Rust and tract (which sums
    /// f32 class weights tree by tree) add exactly the same numbers in the same order.
    Leaf { w0: f32, w1: f32 },
}

impl Tree {
    /// Visits the nodes from the root to `row`'s leaf and returns the leaf.
    fn walk(&self, row: &[f32], mut visit: impl FnMut(usize)) -> usize {
        let mut i = 0;
        loop {
            visit(i);
            match self.nodes[i] {
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    i = if row[feature] < threshold {
                        left
                    } else {
                        right
                    }
                }
                Node::Leaf { .. } => return i,
            }
        }
    }

    fn leaf(&self, row: &[f32]) -> usize {
        self.walk(row, |_| {})
    }
}

/// A fitted random forest.
#[derive(Debug, Clone, PartialEq)]
pub struct Forest {
    n_features: usize,
    trees: Vec<Tree>,
    importance: Vec<f32>,
}

/// linfa breaks an exact tie between the class counts of a node by `HashMap` iteration
/// order (random per process), and pruning merges sibling leaves by that modal class, so
/// ties would make trees differ run to run. This extra weight on label-1 rows breaks
/// every tie towards label 1 (a tie now needs a multiple of 4,096 label-1 rows in a node)
/// and keeps `min_samples_leaf` a row count; the leaf fractions are counted unweighted.
const TIE_BREAK: f32 = 1.0 + 1.0 / 4096.0;

/// One fitted tree before its leaf fractions become weights (they need the forest size).
struct Grown {
    tree: Tree,
    /// Class-1 fraction per node (used at leaves).
    p1: Vec<f64>,
    /// Decrease in impurity per column, normalised within the tree (all 0: no split).
    mdi: Vec<f64>,
}

impl Forest {
    pub fn fit<R: AsRef<[f32]>>(
        x: &[R],
        y: &[f32],
        cfg: &ForestConfig,
    ) -> Result<Self, StackError> {
        cfg.validate()?;
        let (data, k) = rows_matrix(x, None)?;
        check_labels(y, x.len())?;
        let grown = (0..cfg.trees)
            .into_par_iter()
            .map(|t| grow(&data, k, y, cfg, t as u64))
            .collect::<Result<Vec<_>, _>>()?;
        let n_trees = cfg.trees as f64;
        let mut mdi = vec![0.0f64; k];
        let mut trees = Vec::with_capacity(grown.len());
        for mut g in grown {
            mdi.iter_mut().zip(&g.mdi).for_each(|(a, b)| *a += b);
            for (node, p1) in g.tree.nodes.iter_mut().zip(&g.p1) {
                if let Node::Leaf { w0, w1 } = node {
                    *w0 = ((1.0 - p1) / n_trees) as f32;
                    *w1 = (p1 / n_trees) as f32;
                }
            }
            trees.push(g.tree);
        }
        Ok(Forest {
            n_features: k,
            trees,
            importance: normalise(&mdi),
        })
    }

    pub fn n_features(&self) -> usize {
        self.n_features
    }

    pub fn n_trees(&self) -> usize {
        self.trees.len()
    }

    /// Total number of nodes (splits and leaves) over all trees.
    pub fn n_nodes(&self) -> usize {
        self.trees.iter().map(|t| t.nodes.len()).sum()
    }

    pub fn predict<R: AsRef<[f32]>>(&self, x: &[R]) -> Result<Vec<f32>, StackError> {
        let (data, k) = rows_matrix(x, Some(self.n_features))?;
        Ok(data.chunks(k).map(|row| self.predict_row(row)).collect())
    }

    fn predict_row(&self, row: &[f32]) -> f32 {
        // The exported graph's arithmetic: each ensemble node sums its trees' f32 weights
        // from 0 in tree order (tract's SUM aggregate), then the nodes' sums are added in
        // order.
        let mut p = 0.0f32;
        for chunk in self.trees.chunks(TREES_PER_NODE) {
            let mut s = 0.0f32;
            for t in chunk {
                if let Node::Leaf { w1, .. } = t.nodes[t.leaf(row)] {
                    s += w1;
                }
            }
            p += s;
        }
        p
    }

    /// Mean decrease in Gini impurity per column (each split's decrease weighted by the
    /// fraction of its tree's bootstrap rows reaching it, normalised per tree, averaged
    /// over trees); non-negative, sums to 1 (uniform if no tree ever split).
    pub fn importance(&self) -> Vec<f32> {
        self.importance.clone()
    }

    pub fn to_onnx(&self) -> Model {
        let mut g = Graph::new();
        let mut sum: Option<String> = None;
        for chunk in self.trees.chunks(TREES_PER_NODE) {
            let probs = g.tree_ensemble_classifier(STACKER_INPUT, &ensemble(chunk));
            sum = Some(match sum {
                None => probs,
                Some(s) => g.add(&s, &probs),
            });
        }
        let p = g.slice_columns(&sum.expect("at least one tree"), 1, 2);
        finish(
            g,
            &p,
            self.n_features,
            "random forest: P(primary bone tumour) = mean leaf class-1 fraction",
        )
    }
}

/// Trees per exported `TreeEnsembleClassifier` node, whose outputs are then added.
/// tract 0.23.9 finds a leaf's weights by stepping through the node's whole leaf list
/// from its start (`skip` on an ndarray iterator), so one node holding the whole forest
/// costs O(trees × leaves) per row: 0.1 s a row for 200 trees, against 1.6 ms with one
/// node per tree (load 0.2 s instead of 0.04 s).
const TREES_PER_NODE: usize = 1;

/// The `TreeEnsembleClassifier` attributes of some trees (ids counted from 0).
fn ensemble(trees: &[Tree]) -> TreeEnsembleClassifier {
    let mut e = TreeEnsembleClassifier {
        classlabels_int64s: vec![0, 1],
        ..Default::default()
    };
    for (t, tree) in trees.iter().enumerate() {
        for (i, node) in tree.nodes.iter().enumerate() {
            e.nodes_treeids.push(t as i64);
            e.nodes_nodeids.push(i as i64);
            match *node {
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    e.nodes_featureids.push(feature as i64);
                    e.nodes_modes.push(NodeMode::BranchLt);
                    e.nodes_values.push(threshold);
                    e.nodes_truenodeids.push(left as i64);
                    e.nodes_falsenodeids.push(right as i64);
                }
                Node::Leaf { w0, w1 } => {
                    e.nodes_featureids.push(0);
                    e.nodes_modes.push(NodeMode::Leaf);
                    e.nodes_values.push(0.0);
                    e.nodes_truenodeids.push(0);
                    e.nodes_falsenodeids.push(0);
                    for (class, w) in [(0, w0), (1, w1)] {
                        e.class_treeids.push(t as i64);
                        e.class_nodeids.push(i as i64);
                        e.class_ids.push(class);
                        e.class_weights.push(w);
                    }
                }
            }
        }
    }
    e
}

/// Fits tree `t`: bootstrap rows and a column subset from stream `t` of the seed.
fn grow(
    data: &[f32],
    k: usize,
    y: &[f32],
    cfg: &ForestConfig,
    t: u64,
) -> Result<Grown, StackError> {
    let n = y.len();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    rng.set_stream(t);
    let m = ((cfg.max_features * k as f32).round() as usize).clamp(1, k);
    let mut cols = index::sample(&mut rng, k, m).into_vec();
    cols.sort_unstable();
    let rows: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();

    let records = Array2::from_shape_fn((n, m), |(i, j)| data[rows[i] * k + cols[j]]);
    let labels = Array1::from_iter(rows.iter().map(|&r| y[r] == 1.0));
    let weights = labels.mapv(|l| if l { TIE_BREAK } else { 1.0 });
    let fitted = DecisionTree::params()
        .max_depth(cfg.max_depth)
        .min_weight_split(cfg.min_samples_split as f32)
        .min_weight_leaf(cfg.min_samples_leaf as f32)
        .fit(&Dataset::new(records, labels).with_weights(weights))
        .map_err(|e| StackError::Fit(e.to_string()))?;

    // Flatten in pre-order with the columns mapped back to the full row.
    let mut tree = Tree { nodes: Vec::new() };
    let mut info = Vec::new();
    flatten(fitted.root_node(), &cols, &mut tree.nodes, &mut info);

    // Route the bootstrap rows with the prediction rule: rows and label-1 rows per node.
    let mut reach = vec![(0usize, 0usize); tree.nodes.len()];
    for &r in &rows {
        let one = (y[r] == 1.0) as usize;
        tree.walk(&data[r * k..(r + 1) * k], |i| {
            reach[i].0 += 1;
            reach[i].1 += one;
        });
    }
    let mut mdi = vec![0.0f64; k];
    let mut p1 = vec![0.0f64; tree.nodes.len()];
    for (i, (node, info)) in tree.nodes.iter().zip(&info).enumerate() {
        let (count, ones) = reach[i];
        match (node, *info) {
            (Node::Split { feature, .. }, NodeInfo::Decrease(d)) => {
                mdi[*feature] += count as f64 / n as f64 * d;
            }
            (_, NodeInfo::Modal(modal)) if count == 0 => p1[i] = modal as u8 as f64,
            _ => p1[i] = ones as f64 / count as f64,
        }
    }
    let total: f64 = mdi.iter().sum();
    if total > 0.0 {
        mdi.iter_mut().for_each(|v| *v /= total);
    }
    Ok(Grown { tree, p1, mdi })
}

/// Per node: a split's impurity decrease, or a leaf's modal class (used only for a leaf
/// that no bootstrap row reaches under `<`).
#[derive(Clone, Copy)]
enum NodeInfo {
    Decrease(f64),
    Modal(bool),
}

fn flatten(
    node: &TreeNode<f32, bool>,
    cols: &[usize],
    nodes: &mut Vec<Node>,
    info: &mut Vec<NodeInfo>,
) -> usize {
    let id = nodes.len();
    let children = node.children();
    match (node.is_leaf(), children[0], children[1]) {
        (false, Some(l), Some(r)) => {
            let (feature, threshold, d) = node.split();
            nodes.push(Node::Split {
                feature: cols[feature],
                threshold,
                left: 0,
                right: 0,
            });
            info.push(NodeInfo::Decrease(d.max(0.0) as f64));
            let left = flatten(l, cols, nodes, info);
            let right = flatten(r, cols, nodes, info);
            if let Node::Split {
                left: l, right: r, ..
            } = &mut nodes[id]
            {
                (*l, *r) = (left, right);
            }
        }
        _ => {
            nodes.push(Node::Leaf { w0: 0.0, w1: 0.0 });
            info.push(NodeInfo::Modal(node.prediction().unwrap_or(false)));
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::check::TractRows;

    /// Rows at `a` (label 0) and at the next f32 above it (label 1): linfa's midpoint
    /// threshold rounds to `a` itself, so training (`<=`) put the `a` rows left while
    /// prediction (`<`) sends them right. The forest and its ONNX graph must both follow
    /// prediction, as linfa's own `predict` does.
    #[test]
    fn a_row_exactly_at_a_threshold_is_routed_as_linfa_predicts() {
        let a = 1.0e6f32;
        let b = f32::from_bits(a.to_bits() + 1);
        assert_eq!(
            (a + b) / 2.0,
            a,
            "the midpoint rounds onto a training value"
        );
        let x: Vec<Vec<f32>> = (0..40).map(|i| vec![if i < 20 { a } else { b }]).collect();
        let y: Vec<f32> = (0..40).map(|i| (i >= 20) as u8 as f32).collect();

        let tree = DecisionTree::params()
            .fit(&Dataset::new(
                Array2::from_shape_fn((40, 1), |(i, _)| x[i][0]),
                Array1::from_iter(y.iter().map(|&v| v == 1.0)),
            ))
            .unwrap();
        assert_eq!(tree.root_node().split().1, a);
        let linfa = tree.predict(&Array2::from_shape_vec((1, 1), vec![a]).unwrap());
        assert!(
            linfa[0],
            "linfa predicts with `<`: x = threshold goes right"
        );

        let cfg = ForestConfig {
            trees: 5,
            max_features: 1.0,
            min_samples_split: 2,
            min_samples_leaf: 1,
            ..Default::default()
        };
        let f = Forest::fit(&x, &y, &cfg).unwrap();
        assert!(f.trees.iter().all(|t| matches!(
            t.nodes[0],
            Node::Split { threshold, .. } if threshold == a
        )));
        let probe = vec![vec![a - 1.0], vec![a], vec![b]];
        let rust = f.predict(&probe).unwrap();
        // Every bootstrap row is routed right, so a and b get the right leaf's fraction
        // (about ½) and the left leaf, reached by no row, keeps linfa's label 0.
        assert_eq!(rust[0], 0.0);
        assert_eq!(rust[1], rust[2]);
        assert!(rust[1] > 0.2 && rust[1] < 0.8, "{rust:?}");
        let flat: Vec<f32> = probe.iter().flatten().copied().collect();
        let onnx = TractRows::load(&f.to_onnx().to_bytes(), 1)
            .unwrap()
            .run(&flat, 3)
            .unwrap();
        assert_eq!(rust, onnx);
    }

    #[test]
    fn forest_leaf_weights_sum_to_one_per_row() {
        let x: Vec<Vec<f32>> = (0..60).map(|i| vec![i as f32, (i % 7) as f32]).collect();
        let y: Vec<f32> = (0..60).map(|i| ((i * 37) % 11 < 5) as u8 as f32).collect();
        let f = Forest::fit(&x, &y, &ForestConfig::default()).unwrap();
        for row in &x {
            let (mut p0, mut p1) = (0.0f64, 0.0f64);
            for t in &f.trees {
                if let Node::Leaf { w0, w1 } = t.nodes[t.leaf(row)] {
                    p0 += w0 as f64;
                    p1 += w1 as f64;
                }
            }
            assert!((p0 + p1 - 1.0).abs() < 1e-5, "{p0} + {p1}");
        }
    }
}

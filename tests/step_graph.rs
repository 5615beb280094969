//! The attack step as a graph (`autodiff::step`) and the bound K-step loop
//! (`runtime::StepLoops`): one step of the graph against the host step, PGD with the
//! steps in the graph (step by step, and bound through ONNX Runtime's IoBinding) against
//! PGD's host loop, and the copies a bound run makes; on the demo CNN and the MLP
//! fixture, on tract and ONNX Runtime.

mod common;

use harden::attack::pgd::{pgd, PgdConfig};
use harden::attack::{is_success, Head, Norm, Oracle, Outcome, Threat};
use harden::autodiff::step::{StepJob, StepRule};
use harden::classifier::Classifier;
use harden::oracle::ModelOracle;
use harden::runtime::RuntimeChoice;
use harden::runtime::StepMode;
use harden::spec::{DataMapping, InputSpec, SpecArgs};

/// The demo CNN on the Fashion-MNIST slice, or the MLP fixture on its tiny data set.
#[derive(Clone, Copy, Debug)]
enum Net {
    Demo,
    Mlp,
}

fn open(net: Net, runtime: RuntimeChoice, n: usize) -> (ModelOracle, Vec<f32>, Vec<usize>) {
    let (model, data) = match net {
        Net::Demo => ("models/fmnist_cnn.onnx", "data/fashion-mnist-slice"),
        Net::Mlp => ("fixtures/mlp.onnx", "fixtures/data/tiny.npz"),
    };
    let root = common::root();
    let m = harden::model::OnnxModel::load(&root.join(model)).unwrap();
    let spec = InputSpec::resolve(&m.classifier_input().unwrap(), &SpecArgs::default()).unwrap();
    let src = harden::data::open(root.join(data).to_str().unwrap(), None, None).unwrap();
    let mut src = harden::data::limit(src, n);
    let mapping = DataMapping::new(&spec, src.example_shape(), src.kind()).unwrap();
    let (mut raw, mut ys) = (vec![], vec![]);
    while src.next_batch(4096, &mut raw, &mut ys).unwrap() > 0 {}
    let mut x = vec![];
    mapping.map_batch(&raw, &mut x, 0).unwrap();
    let labels: Vec<usize> = ys.iter().map(|y| y.unwrap()).collect();
    let opts = common::options(runtime);
    let c = Classifier::open(&m, &spec, &mapping.example_shape, &opts).unwrap();
    (ModelOracle::new(&m, &spec, c, &opts).unwrap(), x, labels)
}

fn runtimes() -> Vec<RuntimeChoice> {
    let mut v = vec![RuntimeChoice::Tract];
    if common::ort_available() {
        v.push(RuntimeChoice::Ort);
    }
    v
}

/// Distance in units in the last place between two floats of the same sign (0 for
/// equal values, +0 and -0 included).
fn ulps(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    let key = |v: f32| {
        let i = v.to_bits() as i32;
        if i < 0 {
            i32::MIN - i
        } else {
            i
        }
    };
    key(a).abs_diff(key(b))
}

fn max_ulps(a: &[f32], b: &[f32]) -> u32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| ulps(*x, *y))
        .max()
        .unwrap_or(0)
}

/// The largest absolute difference between two vectors.
fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn threat(norm: Norm) -> Threat {
    match norm {
        Norm::Linf => Threat::new(Norm::Linf, 0.05, (0.0, 1.0)).unwrap(),
        Norm::L2 => Threat::new(Norm::L2, 1.0, (0.0, 1.0)).unwrap(),
    }
}

/// One step of the step graph gives the host's step from the same gradient: Linf bit
/// for bit; L2 within a few ulps (its norms are summed in another order).
#[test]
fn one_step_of_the_graph_is_the_host_step() {
    for rt in runtimes() {
        for net in [Net::Demo, Net::Mlp] {
            let (mut o, x0, y) = open(net, rt, 40);
            let len = o.example_len();
            let n = y.len();
            for norm in [Norm::Linf, Norm::L2] {
                let threat = threat(norm);
                let x = threat.random_starts(&x0, len, 7, 0, &harden::attack::local_ids(n));
                let rule = StepRule {
                    threat,
                    alpha: threat.eps / 4.0,
                };
                let lg = o.loss_grad(&x, Head::CrossEntropy { labels: &y }).unwrap();
                let mut host = x.clone();
                threat.ascend(&mut host, &lg.grad, &vec![rule.alpha; n], len);
                threat.project(&mut host, &x0, len);
                // The step must move the points, or the comparison proves little.
                assert!(max_ulps(&host, &x) > 1000, "{net:?} {norm:?}: no step");
                for mode in [StepMode::Graph, StepMode::Bound] {
                    o.set_step_mode(mode);
                    let never = |_: usize, _: &[f32]| false;
                    let job = StepJob {
                        steps: 1,
                        judge_from: 0,
                        stop_early: false,
                        judge: &never,
                    };
                    let done = o
                        .run_steps(&x, &x0, Head::CrossEntropy { labels: &y }, &rule, &job)
                        .unwrap()
                        .expect("the oracle runs step graphs");
                    let d = max_ulps(&done.last, &host);
                    let a = max_abs(&done.last, &host);
                    let what = format!("{rt:?} {net:?} {norm:?} {mode:?}");
                    eprintln!("{what}: one step, at most {d} ulps, {a:e} from the host step");
                    // Values in [0, 1]: a float32 rounding or two of 1 is 1.2e-7 each.
                    match norm {
                        Norm::Linf => assert_eq!(d, 0, "{what}"),
                        Norm::L2 => assert!(a <= 1e-6, "{what}: {a:e} apart"),
                    }
                    for i in 0..n {
                        let (a, c) = (
                            &done.last[i * len..(i + 1) * len],
                            &x0[i * len..(i + 1) * len],
                        );
                        assert!(threat.contains(a, c), "{what}: example {i} left the ball");
                    }
                }
                o.set_step_mode(StepMode::Host);
            }
        }
    }
}

/// How closely two runs' adversarial points must agree.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Agree {
    /// Bit for bit.
    Exact,
    /// Within float32 roundings (1e-5 on values in [0, 1]).
    Close,
    /// Only the successes and evaluations: the runs' batches had other shapes, for
    /// which tract rounds its gradients differently, and an L2 step follows the
    /// gradient's values (not only their signs).
    Outcome,
}

fn same_outcome(a: &Outcome, b: &Outcome, agree: Agree, what: &str) {
    assert_eq!(a.success, b.success, "{what}: successes differ");
    assert_eq!(a.spent, b.spent, "{what}: evaluations per example differ");
    assert_eq!(a.evaluations, b.evaluations, "{what}");
    let d = max_ulps(&a.x_adv, &b.x_adv);
    let e = max_abs(&a.x_adv, &b.x_adv);
    eprintln!("{what}: adversarial points at most {d} ulps, {e:e} apart");
    match agree {
        Agree::Exact => assert_eq!(d, 0, "{what}: adversarial points differ"),
        Agree::Close => assert!(e <= 1e-5, "{what}: adversarial points {e:e} apart"),
        Agree::Outcome => {}
    }
}

/// PGD with its steps in the graph (step by step, and bound) finds what its host loop
/// finds: the same successes, evaluations and adversarial points (Linf bit for bit).
#[test]
fn pgd_in_the_graph_keeps_the_host_outcome() {
    for rt in runtimes() {
        for net in [Net::Demo, Net::Mlp] {
            let (mut o, x, y) = open(net, rt, 64);
            for norm in [Norm::Linf, Norm::L2] {
                let threat = threat(norm);
                for (every_step, random_start, margin) in [
                    (true, true, false),
                    (false, true, false),
                    (false, false, true),
                ] {
                    let cfg = PgdConfig {
                        steps: 5,
                        every_step,
                        random_start,
                        margin_loss: margin,
                        seed: 3,
                        ..Default::default()
                    };
                    o.set_step_mode(StepMode::Host);
                    let host = pgd(&mut o, &x, &y, None, &threat, &cfg).unwrap();
                    let broken = host.success.iter().filter(|s| **s).count();
                    let what = format!("{rt:?} {net:?} {norm:?} {cfg:?}");
                    assert!(broken > 0 && broken < y.len(), "{what}: {broken} broken");
                    for mode in [StepMode::Graph, StepMode::Bound] {
                        o.set_step_mode(mode);
                        let g = pgd(&mut o, &x, &y, None, &threat, &cfg).unwrap();
                        // tract rounds differently for different batch shapes, and the
                        // host loop shrinks its batch unless every step.
                        let same_shapes = rt == RuntimeChoice::Ort || every_step;
                        let agree = match (norm, same_shapes) {
                            (Norm::Linf, _) => Agree::Exact,
                            (Norm::L2, true) => Agree::Close,
                            (Norm::L2, false) => Agree::Outcome,
                        };
                        same_outcome(&host, &g, agree, &format!("{what} {mode:?}"));
                    }
                }
            }
        }
    }
}

/// A bound run copies the iterate in once and out once (plus once per step at which
/// an example was first judged adversarial, to keep its iterate), where a run on host
/// arrays copies it in and out every step; the kept iterate of step t is the iterate
/// t steps from the start.
#[test]
fn bound_runs_copy_the_iterate_once() {
    if !common::ort_available() {
        return;
    }
    for net in [Net::Demo, Net::Mlp] {
        let (mut o, x0, y) = open(net, RuntimeChoice::Ort, 40);
        let len = o.example_len();
        let n = y.len();
        let threat = threat(Norm::Linf);
        let rule = StepRule {
            threat,
            alpha: 0.01,
        };
        let head = Head::CrossEntropy { labels: &y };
        let run = |o: &mut ModelOracle,
                   steps,
                   judge_from,
                   judge: &(dyn Fn(usize, &[f32]) -> bool + Sync)| {
            let job = StepJob {
                steps,
                judge_from,
                stop_early: false,
                judge,
            };
            o.run_steps(&x0, &x0, head, &rule, &job).unwrap().unwrap()
        };
        let never = |_: usize, _: &[f32]| false;
        let always = |_: usize, _: &[f32]| true;
        o.set_step_mode(StepMode::Graph);
        let host = run(&mut o, 6, 0, &never);
        o.set_step_mode(StepMode::Bound);
        let bound = run(&mut o, 6, 0, &never);
        // The runs of the batch: as many copies in as runs when bound, six times as
        // many on host arrays.
        let runs = bound.copies_in;
        assert!(runs >= 1, "{net:?}");
        assert_eq!(bound.copies_out, runs, "{net:?}");
        assert_eq!(host.copies_in, 6 * runs, "{net:?}");
        assert_eq!(host.copies_out, 6 * runs, "{net:?}");
        assert_eq!(bound.last, host.last, "{net:?}: six bound steps");
        assert!(bound.first.iter().all(Option::is_none));
        // Everything judged adversarial from step 3: the iterate of step 3 is kept (one
        // more copy out per run), and it is the end point of a 3-step run.
        let found = run(&mut o, 6, 3, &always);
        assert_eq!(found.copies_out, 2 * runs, "{net:?}");
        assert!(found.first.iter().all(|f| *f == Some(3)), "{net:?}");
        let three = run(&mut o, 3, 0, &never);
        assert_eq!(found.kept, three.last, "{net:?}: the kept iterate is x_3");
        assert_ne!(three.last, bound.last, "{net:?}: steps move the iterate");
        // Step 0's iterate is the start, which the host holds: no copy.
        let zero = run(&mut o, 2, 0, &always);
        assert_eq!(zero.copies_out, runs);
        assert_eq!(zero.kept, x0);
        // The judge sees each example's logits: a judge on the clean prediction
        // agrees with the classifier.
        let logits = o.logits(&x0).unwrap();
        let wrong: Vec<bool> = (0..n)
            .map(|i| is_success(logits.row(i).as_slice().unwrap(), y[i], None))
            .collect();
        let judge = |i: usize, row: &[f32]| is_success(row, y[i], None);
        let first = run(&mut o, 1, 0, &judge);
        let judged: Vec<bool> = first.first.iter().map(Option::is_some).collect();
        assert_eq!(judged, wrong, "{net:?}");
        assert_eq!(first.kept.len(), n * len);
    }
}

/// A whole audit with PGD (two restarts, two radii, the first-adversarial pairs, the
/// re-checks and the sanity probes) reports the same with PGD's steps bound on ONNX
/// Runtime as with its host loop: every number and example, times apart.
#[test]
fn audits_report_the_same_with_bound_steps() {
    use harden::audit::{run_audit, RobustPlan};
    use harden::robust::{parse_attacks, AttackKnobs};
    if !common::ort_available() {
        return;
    }
    for net in [Net::Demo, Net::Mlp] {
        let (model, data) = match net {
            Net::Demo => ("models/fmnist_cnn.onnx", "data/fashion-mnist-slice"),
            Net::Mlp => ("fixtures/mlp.onnx", "fixtures/data/tiny.npz"),
        };
        let root = common::root();
        let m = harden::model::OnnxModel::load(&root.join(model)).unwrap();
        let spec =
            InputSpec::resolve(&m.classifier_input().unwrap(), &SpecArgs::default()).unwrap();
        let knobs = AttackKnobs {
            steps: Some(6),
            restarts: 2,
            seed: 5,
            square_queries: None,
        };
        let (attacks, cascade) = parse_attacks("pgd", &knobs).unwrap();
        let plan = RobustPlan {
            norm: Norm::Linf,
            eps: vec![0.02, 0.05],
            attacks,
            cascade,
        };
        let report = |mode: StepMode| {
            let src = harden::data::open(root.join(data).to_str().unwrap(), None, None).unwrap();
            let mut src = harden::data::limit(src, 96);
            let mapping = DataMapping::new(&spec, src.example_shape(), src.kind()).unwrap();
            let opts = common::options(RuntimeChoice::Ort);
            let c = Classifier::open(&m, &spec, &mapping.example_shape, &opts).unwrap();
            let mut o = ModelOracle::new(&m, &spec, c, &opts).unwrap();
            o.set_step_mode(mode);
            let a = run_audit(
                &m,
                &spec,
                &mut o,
                src.as_mut(),
                data,
                &mapping,
                Some(&plan),
                &mut |_| {},
            )
            .unwrap();
            let mut v = serde_json::to_value(&a).unwrap();
            v.as_object_mut().unwrap().remove("meta");
            v
        };
        let host = report(StepMode::Host);
        let bound = report(StepMode::Bound);
        let robust = host["robust"]["results"].to_string();
        assert!(robust.contains("robust_accuracy"), "{net:?}: {robust}");
        assert_eq!(host, bound, "{net:?}");
    }
}

/// A model to train (`net`'s), opened for a `TrainNet` on `threads` threads with its
/// attack steps run as `mode` says.
fn train_net(net: Net, threads: usize, mode: StepMode) -> harden::train::TrainNet {
    let model = match net {
        Net::Demo => "models/fmnist_cnn.onnx",
        Net::Mlp => "fixtures/mlp.onnx",
    };
    let m = harden::model::OnnxModel::load(&common::root().join(model)).unwrap();
    let spec = InputSpec::resolve(&m.classifier_input().unwrap(), &SpecArgs::default()).unwrap();
    let shape: Vec<usize> = spec.model_shape[1..]
        .iter()
        .map(|d| d.fixed().unwrap())
        .collect();
    let mut opts = common::options(RuntimeChoice::Ort);
    opts.threads = threads;
    let mut t = harden::train::TrainNet::new(
        spec.wrap(&m).unwrap(),
        &spec.input_name,
        &shape,
        10,
        harden::autodiff::trainable_params(&m.proto),
        &opts,
        32,
    )
    .unwrap();
    t.set_step_mode(mode);
    t
}

/// `epochs` of training by `method` (`steps` attack steps at eps 0.1), batches of 32, with
/// `kind` (learning rate 0.01, momentum 0.9, weight decay 5e-4) on `schedule`.
fn train_config(
    method: harden::train::Method,
    steps: usize,
    kind: harden::train::optim::OptimizerKind,
    epochs: usize,
    schedule: harden::train::optim::Schedule,
) -> harden::train::HardenConfig {
    harden::train::HardenConfig {
        method,
        norm: Norm::Linf,
        eps: threat(Norm::Linf).eps,
        train_eps: None,
        epochs,
        batch_size: 32,
        adv_ratio: 1.0,
        attack_steps: steps,
        step_size: None,
        beta: 6.0,
        optim: harden::train::optim::OptimConfig {
            kind,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule,
            warmup_steps: 0,
            total_steps: 0,
        },
        warmup_epochs: 0.0,
        seed: 4,
        val_steps: 1,
        patience: None,
    }
}

/// Adversarial training (PGD-3 and FGSM-RS examples) with the attack's steps in the step
/// graph (weights as its inputs; the validation attack's too) trains the same weights and
/// validates to the same accuracies as with the host loop, bit for bit on ONNX Runtime;
/// bound, with the weights, the gradients and the optimiser's state held in the runtime's
/// memory and the optimiser's step run as a graph: bit for bit on
/// one run, within 1e-6 (SGD) or 1e-3 (Adam) where the host loop cuts the batch (the
/// gradients summed in another order).
#[test]
fn training_with_steps_in_the_graph_trains_the_same_weights() {
    use harden::train::{self, optim, Examples, Method};
    if !common::ort_available() {
        return;
    }
    for net_kind in [Net::Demo, Net::Mlp] {
        let (o, x, y) = open(net_kind, RuntimeChoice::Ort, 80);
        let len = o.example_len();
        drop(o);
        let set = Examples { x, y, len };
        let threat = threat(Norm::Linf);
        let (sgd, adam) = (optim::OptimizerKind::Sgd, optim::OptimizerKind::Adam);
        for (method, steps, kind) in [
            (Method::Pgd, 3, sgd),
            (Method::Fast, 1, sgd),
            (Method::Fast, 1, adam),
        ] {
            let cfg = train_config(method, steps, kind, 1, optim::Schedule::Cosine);
            let train_with = |mode: StepMode, threads: usize| {
                let mut net = train_net(net_kind, threads, mode);
                // Validated on the training examples (PGD-1, through the same loops).
                let fit = train::fit(
                    &mut net,
                    &set,
                    &set,
                    &threat,
                    &cfg,
                    None,
                    None,
                    &mut |_| {},
                    &mut || 0.0,
                )
                .unwrap();
                let val: Vec<(Option<f64>, Option<f64>)> = fit
                    .history
                    .iter()
                    .map(|r| (r.val_clean, r.val_robust))
                    .collect();
                assert_eq!(
                    net.ran_resident(),
                    mode == StepMode::Bound,
                    "{mode:?}: weights held in the runtime's memory or not"
                );
                (net.weights().unwrap().to_vec(), val)
            };
            let before = train_net(net_kind, 1, StepMode::Host)
                .weights()
                .unwrap()
                .to_vec();
            for threads in [1, 2] {
                let (host, host_val) = train_with(StepMode::Host, threads);
                assert_ne!(
                    host, before,
                    "{net_kind:?} {method:?}: training moved nothing"
                );
                for mode in [StepMode::Graph, StepMode::Bound] {
                    let (w, val) = train_with(mode, threads);
                    // The original model's validation: the same whichever loop.
                    assert_eq!(val[0], host_val[0], "{net_kind:?} {mode:?}: epoch 0");
                    let worst = w
                        .iter()
                        .zip(&host)
                        .flat_map(|(a, b)| a.iter().zip(b.iter()))
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0f32, f32::max);
                    // Bound runs the batch's weight gradients as one run, the host
                    // loop as cache-sized runs on `threads` sessions whose gradients it
                    // adds: the same sums in another order, except for the MLP (whose
                    // runs hold the batch) on one thread.
                    // Adam divides by the root of the second moment: a gradient entry
                    // near zero summed in another order can change its normalised update
                    // (measured: 3.4e-5 after two steps); a wrong update moves weights by
                    // about the learning rate, 0.01.
                    let one_run = threads == 1 && matches!(net_kind, Net::Mlp);
                    let exact = mode == StepMode::Graph || one_run;
                    let tol = if kind == adam { 1e-3 } else { 1e-6 };
                    assert!(
                        if exact { w == host } else { worst <= tol },
                        "{net_kind:?} {method:?} {mode:?} on {threads} threads: other weights than the host loop's (by {worst:e})"
                    );
                    if exact {
                        assert_eq!(val, host_val, "{net_kind:?} {method:?} {mode:?}");
                    }
                }
            }
        }
    }
}

/// Training with the weights and the optimiser's state held in ONNX Runtime's memory
/// checkpoints what it holds: one epoch, its checkpoint (weights and Adam's moments
/// fetched from the runtime; checkpoints after every batch and validation after every
/// epoch reading them in between) and a resumed second epoch train the weights of two
/// uninterrupted epochs, bit for bit, also on a model whose weights and SGD momenta an
/// earlier run left in the runtime's memory.
#[test]
fn resident_training_checkpoints_and_resumes_to_the_same_weights() {
    use harden::train::{self, checkpoint, optim, Checkpointing, Examples, Method};
    if !common::ort_available() {
        return;
    }
    let (o, x, y) = open(Net::Demo, RuntimeChoice::Ort, 128);
    let len = o.example_len();
    drop(o);
    // 96 to train on, 32 to validate each epoch (validation reads the held weights).
    let val = Examples {
        x: x[96 * len..].to_vec(),
        y: y[96..].to_vec(),
        len,
    };
    let (x, y) = (x[..96 * len].to_vec(), y[..96].to_vec());
    let set = Examples { x, y, len };
    let threat = threat(Norm::Linf);
    let cfg = |epochs: usize, kind: optim::OptimizerKind| {
        train_config(Method::Fast, 1, kind, epochs, optim::Schedule::Constant)
    };
    let d = tempfile::tempdir().unwrap();
    let adam = optim::OptimizerKind::Adam;
    // `warm`: the same model first trained by an SGD run (its weights and momenta held in
    // the runtime's memory), which the resumed run's must replace.
    let run =
        |epochs: usize, ckpt: &std::path::Path, resume: Option<checkpoint::State>, warm: bool| {
            let mut net = train_net(Net::Demo, 1, StepMode::Bound);
            let c = Checkpointing {
                path: ckpt,
                fingerprint: "resident".into(),
                // Also checkpointed after each batch but an epoch's last.
                every_batches: 1,
            };
            let none = Examples::default();
            if warm {
                let sgd = cfg(1, optim::OptimizerKind::Sgd);
                train::fit(
                    &mut net,
                    &set,
                    &none,
                    &threat,
                    &sgd,
                    None,
                    None,
                    &mut |_| {},
                    &mut || 0.0,
                )
                .unwrap();
            }
            let fit = train::fit(
                &mut net,
                &set,
                &val,
                &threat,
                &cfg(epochs, adam),
                Some(&c),
                resume,
                &mut |_| {},
                &mut || 0.0,
            )
            .unwrap();
            assert!(fit.resident, "the steps ran with the weights on the host");
            // The last weights (the fit's are the best epoch's).
            let last = checkpoint::load(ckpt).unwrap().params;
            assert_eq!(last.len(), fit.params.len());
            last
        };
    let whole = run(2, &d.path().join("whole.ckpt"), None, false);
    let part = d.path().join("part.ckpt");
    let first = run(1, &part, None, false);
    assert_ne!(first, whole, "the second epoch changed nothing");
    let state = checkpoint::load(&part).unwrap();
    assert!(
        state.opt_v.iter().flatten().any(|v| *v != 0.0),
        "no moments saved"
    );
    let resumed = run(2, &part, Some(state.clone()), false);
    assert!(
        resumed == whole,
        "resumed training differs from the uninterrupted"
    );
    let over_warm = run(2, &part, Some(state), true);
    assert!(
        over_warm == whole,
        "a model trained before resumed to other weights"
    );
}

/// `--step-loop` reaches the audit (its `meta.step_loop` says which ran, `bound` being
/// `graph` on tract): a PGD audit of
/// the demo CNN gives the same report (JSON apart from `meta`) with its steps in the
/// host loop, in the graph and bound, on each runtime; a step loop that does not exist
/// is refused (exit 2).
#[test]
fn the_step_loop_flag_gives_the_same_audit() {
    let dir = tempfile::tempdir().unwrap();
    for rt in runtimes() {
        let name = match rt {
            RuntimeChoice::Ort => "ort",
            _ => "tract",
        };
        let report = |mode: &str| {
            let json = dir.path().join(format!("{name}-{mode}.json"));
            let out = common::harden()
                .args(["audit", "models/fmnist_cnn.onnx", "--data"])
                .args(["data/fashion-mnist-slice", "--limit", "48", "--eps", "0.05"])
                .args(["--attacks", "pgd", "--seed", "2", "--threads", "2"])
                .args(["--runtime", name, "--step-loop", mode, "--json"])
                .arg(&json)
                .current_dir(common::root())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.code().unwrap_or(9) <= 1, "{name} {mode}: {err}");
            let mut v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
            // Bound needs ONNX Runtime: on tract the graph runs step by step.
            let ran = if name == "tract" && mode == "bound" {
                "graph"
            } else {
                mode
            };
            assert_eq!(v["meta"]["step_loop"], ran, "{name} {mode}");
            v.as_object_mut().unwrap().remove("meta");
            v
        };
        let host = report("host");
        let robust = &host["audit"]["robust"]["results"][0]["robust_accuracy"];
        assert!(robust.as_f64().is_some_and(|r| r < 0.9), "{name}: {robust}");
        for mode in ["graph", "bound"] {
            assert!(
                report(mode) == host,
                "{name}: --step-loop {mode} changed the report"
            );
        }
    }
    common::fails_with(
        &[
            "audit",
            &common::f("mlp.onnx"),
            "--eps",
            "0.1",
            "--step-loop",
            "gpu",
        ],
        "step-loop",
    );
}

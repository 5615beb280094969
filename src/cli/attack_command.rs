//! `harden attack`: one attack on the data, its adversarial examples written to `.npz`.

use super::*;

#[derive(Args, Debug)]
pub struct AttackArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// Data (as for `audit`).
    #[arg(long)]
    pub data: Option<String>,
    #[arg(long)]
    pub limit: Option<usize>,
    /// The attack: fgsm, pgd, pgd-margin, apgd-ce, apgd-dlr, apgd-t or square.
    #[arg(long)]
    pub attack: String,
    /// Radius of the threat model, in raw input units.
    #[arg(long, allow_hyphen_values = true)]
    pub eps: f32,
    /// Write the adversarial examples, original and new labels to this .npz file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub attack_opts: AttackOpts,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub rounding: RoundingArgs,
}

/// Runs the attack; where ONNX Runtime runs out of memory, again at half the batch size
/// (an example's random draws come from its position in the data, so the outcomes do
/// not depend on it), down to one example, saying so.
pub(super) fn run(mut a: AttackArgs, env: &Env) -> Result<i32> {
    halving_batch(a.run.batch_size, "attacking", |b| {
        a.run.batch_size = b;
        attack(&a, env)
    })
}

fn attack(a: &AttackArgs, env: &Env) -> Result<i32> {
    let (mut attacks, _) = crate::robust::parse_attacks(&a.attack, &a.attack_opts.knobs())?;
    if attacks.len() != 1 || a.attack.contains(',') || a.attack == "standard" {
        bail!("--attack takes one attack name (use `harden audit --attacks` for several)");
    }
    let spec_attack = attacks.remove(0);
    let mut s = open_session(
        &a.model,
        spec_attack.needs_gradients(),
        a.data.as_deref(),
        a.limit,
        &a.input,
        &a.run,
        &a.rounding,
        env,
    )?;
    let threat = crate::attack::Threat::new(a.attack_opts.norm(), a.eps, s.spec.range)?;
    let geo = audit::geometry(s.spec.layout, &s.mapping.example_shape);
    let len = s.mapping.example_len();
    let (mut raw, mut labels, mut mapped) = (vec![], vec![], vec![]);
    let (mut all_adv, mut ys, mut clean_pred, mut adv_pred, mut success) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut seen = 0;
    let bar = progress_bar(s.source.len().map(|n| n as u64), "attacking");
    loop {
        raw.clear();
        labels.clear();
        let n =
            s.source
                .next_batch(s.oracle.classifier().batch().max(64), &mut raw, &mut labels)?;
        if n == 0 {
            break;
        }
        s.mapping.map_batch(&raw, &mut mapped, seen)?;
        let k = s.oracle.classifier().num_classes();
        let y: Vec<usize> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| match l {
                Some(v) if *v < k => Ok(*v),
                Some(v) => bail!(
                    "data example {} has label {v}, out of range for a model with {k} outputs",
                    seen + i
                ),
                None => bail!(
                    "data example {} has no label; attacks need labelled data",
                    seen + i
                ),
            })
            .collect::<Result<_>>()?;
        let clean_logits = s.oracle.classifier().logits(&mapped)?;
        crate::classifier::check_finite(&clean_logits, seen)?;
        let clean = crate::robust::predictions(&clean_logits);
        let ids: Vec<u64> = (seen as u64..(seen + n) as u64).collect();
        let out = crate::robust::run_attack_at(
            &spec_attack,
            &mut s.oracle,
            &mapped,
            &y,
            &ids,
            &threat,
            geo,
        )?;
        // Re-check with a plain forward pass of the original model.
        let after = crate::robust::predictions(&s.oracle.classifier().logits(&out.x_adv)?);
        for i in 0..n {
            let inside = threat.contains(
                &out.x_adv[i * len..(i + 1) * len],
                &mapped[i * len..(i + 1) * len],
            );
            success.push(inside && clean[i] == y[i] && after[i] != y[i]);
        }
        all_adv.extend_from_slice(&out.x_adv);
        ys.extend(y);
        clean_pred.extend(clean);
        adv_pred.extend(after);
        seen += n;
        bar.set_position(seen as u64);
    }
    bar.finish_and_clear();
    if seen == 0 {
        bail!("the data holds no examples");
    }
    let correct = ys.iter().zip(&clean_pred).filter(|(a, b)| a == b).count();
    let broken = success.iter().filter(|b| **b).count();
    if let Some(out) = &a.out {
        let mut shape = vec![seen];
        shape.extend(&s.mapping.example_shape);
        let to_i64 = |v: &[usize]| v.iter().map(|x| *x as i64).collect::<Vec<_>>();
        let bytes = crate::npz::write_npz(&[
            ("x_adv", crate::npz::Array::F32(&shape, &all_adv)),
            ("y", crate::npz::Array::I64(&[seen], &to_i64(&ys))),
            (
                "y_clean",
                crate::npz::Array::I64(&[seen], &to_i64(&clean_pred)),
            ),
            ("y_adv", crate::npz::Array::I64(&[seen], &to_i64(&adv_pred))),
            ("success", crate::npz::Array::Bool(&[seen], &success)),
        ])?;
        write_atomic(out, &bytes)?;
    }
    print_stdout(&format!(
        "{} eps={} on {} examples ({}): clean accuracy {:.2}%, robust accuracy {:.2}% ({} of {} correct examples broken, each re-checked by a plain forward pass){}\n",
        spec_attack.name(),
        a.eps,
        seen,
        s.oracle.classifier().runtime_name(),
        100.0 * correct as f64 / seen as f64,
        100.0 * (correct - broken) as f64 / seen as f64,
        broken,
        correct,
        a.out.as_ref().map(|p| format!("; saved to {}", p.display())).unwrap_or_default()
    ))?;
    Ok(EXIT_OK)
}

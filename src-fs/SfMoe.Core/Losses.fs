/// Balance losses of a sparse block as pure functions (docs/moe.md §7), and the classification loss.
module SfMoe.Core.Losses

open TorchSharp
open SfMoe.Core.Tensors

/// GShard / SF-MoE: per group, E^2 * mean_e(mean_s probs[s,e] * mean_s [top1(s) = e]), averaged over groups.
/// probs (S, E) with gradient, top1 (S,) int64 (before capacity dropping), `groups` groups of S / groups tokens.
/// 1 when perfectly balanced, E at full collapse.
let gshard (groups: int64) (probs: Tensor) (top1: Tensor) : Tensor =
    let s, e = probs.shape[0], probs.shape[1]
    let n = s / groups
    use p = probs.view(groups, n, e)
    use meanP = p.mean([| 1L |]) // (G, E)
    use frac =
        use _ = torch.no_grad ()
        use oh = torch.nn.functional.one_hot(top1, e)
        use ohf = oh.to_type(probs.dtype).view(groups, n, e)
        ohf.mean([| 1L |]) // (G, E)
    use prod = meanP * frac
    use m = prod.mean()
    m.mul(Scalars.constant (float (e * e)))

/// var(v) / (mean(v)^2 + 1e-10), with the unbiased variance (torch's default).
let cv2 (v: Tensor) : Tensor =
    use var = variance v
    use mean = v.mean()
    // mean * mean, not mean.square(): TorchSharp's square() is pow(2) with a temporary Scalar (see Scalars).
    use m2 = (mean * mean).add_(Scalars.constant 1e-10, Scalars.one)
    var / m2

/// tutel / GMoE load + importance loss over all S tokens. `logits` (S, E) clean, `noisyLogits` (S, E) (equal to
/// `logits` without noise), `lastChoice` (S, 1) the k-th chosen expert, `gateNoise` > 0 sets the normal CDF's scale.
let loadImportance (gateNoise: float) (logits: Tensor) (noisyLogits: Tensor) (lastChoice: Tensor) : Tensor =
    let e = logits.shape[1]
    use clean = logits.softmax(1L)
    use importance = clean.sum([| 0L |])
    use threshold = noisyLogits.gather(1L, lastChoice) // (S, 1)
    use diff = sub clean threshold
    use z = diff.div(Scalars.constant (gateNoise / float e * sqrt 2.0))
    use cdf = z.erf_().add_(Scalars.one, Scalars.one).mul_(Scalars.constant 0.5) // Phi((p - t) / (noise / E))
    use load = cdf.sum([| 0L |])
    use a = cv2 importance
    use b = cv2 load
    (add a b).div_(Scalars.constant 2.0)

/// Mean cross-entropy of logits (B, K) against labels (B,), in float32 (or float64) whatever the logits' dtype.
let crossEntropy (logits: Tensor) (labels: Tensor) : Tensor =
    if logits.dtype = torch.ScalarType.Float32 || logits.dtype = torch.ScalarType.Float64 then
        torch.nn.functional.cross_entropy(logits, labels)
    else
        use l = logits.to_type(torch.ScalarType.Float32)
        torch.nn.functional.cross_entropy(l, labels)

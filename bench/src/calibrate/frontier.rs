//! The cost/quality frontier and the recommendation.

use super::SettingResult;

/// Indices of the settings no other setting beats on both cost and score (lower cost, higher
/// score; ties broken towards the cheaper), sorted by cost.
pub fn frontier(results: &[SettingResult]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..results.len())
        .filter(|&i| results[i].cost.is_finite())
        .collect();
    idx.sort_by(|&a, &b| {
        results[a]
            .cost
            .total_cmp(&results[b].cost)
            .then(results[b].score.total_cmp(&results[a].score))
    });
    let mut out = Vec::new();
    let mut best = f64::NEG_INFINITY;
    for i in idx {
        if results[i].score > best {
            best = results[i].score;
            out.push(i);
        }
    }
    out
}

/// The cheapest setting whose score is at least `floor` times target-only's.
pub fn recommend(results: &[SettingResult], floor: f64) -> Option<usize> {
    let target = results.iter().find(|r| r.setting == "target")?.score;
    (0..results.len())
        .filter(|&i| results[i].score >= floor * target - 1e-12 && results[i].cost.is_finite())
        .min_by(|&a, &b| results[a].cost.total_cmp(&results[b].cost))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, cost: f64, score: f64) -> SettingResult {
        SettingResult {
            setting: name.into(),
            cost,
            score,
            ..Default::default()
        }
    }

    #[test]
    fn frontier_and_recommendation() {
        let rs = vec![
            r("target", 1.0, 0.8),
            r("draft", 0.4, 0.5),
            r("exact", 1.1, 0.8),
            r("a", 0.7, 0.75),
            r("b", 0.8, 0.7),
            r("c", 0.6, 0.78),
        ];
        // b is dominated by c (cheaper, better); exact by target.
        assert_eq!(frontier(&rs), vec![1, 5, 0]);
        assert_eq!(recommend(&rs, 0.95), Some(5)); // 0.78 ≥ 0.76
        assert_eq!(recommend(&rs, 1.0), Some(0));
        assert_eq!(recommend(&rs, 0.6), Some(1));
        assert_eq!(recommend(&rs, 1.5), None);
    }
}

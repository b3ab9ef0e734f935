// A ThreadSanitizer run of the shim (not part of the cargo build): gpu/shim/tsan-check builds
// this with -fsanitize=thread and runs it. TSan sees the shim's fibers (the CUDA threads) as
// threads through its fiber API, ordered only by the barriers and shuffles (shim.cpp). It
// launches rms_norm, rope, mmvq_q8_0, mmq_q8_0, mmq_mma_q4_k, attention_paged, the split-K attention pair and
// topk_rows (barriers, warp shuffles, shared memory, several blocks on several OS threads),
// which must be race free, and then, with `--racy`, shim_test_reverse without its barrier,
// which TSan must report.
#include <cstdio>
#include <cstring>
#include <vector>

extern "C" int cascade_shim_launch(const char*, const unsigned*, const unsigned*, unsigned, void**);

static int launch(const char* name, unsigned gx, unsigned gy, unsigned threads, std::vector<void*> args) {
    const unsigned grid[3] = {gx, gy, 1}, block[3] = {threads, 1, 1};
    const int rc = cascade_shim_launch(name, grid, block, 0, args.data());
    std::printf("%s: %d\n", name, rc);
    return rc;
}

int main(int argc, char** argv) {
    int rc = 0;
    {
        int cols = 256, n = 2;
        float eps = 1e-6f;
        std::vector<float> x(cols * n), w(cols, 1.0f), y(cols * n);
        for (int i = 0; i < cols * n; ++i) x[i] = (float)(i % 17) - 8.0f;
        float *xp = x.data(), *wp = w.data(), *yp = y.data();
        rc |= launch("rms_norm", n, 1, 128, {&xp, &wp, &yp, &cols, &eps, &n});
    }
    {
        int rows = 2, cols = 256, ntok = 3;
        std::vector<unsigned char> wq(rows * cols / 32 * 34, 1), xq(ntok * cols / 32 * 36, 1);
        std::vector<float> y(rows * ntok);
        void *wp = wq.data(), *xp = xq.data();
        float* yp = y.data();
        rc |= launch("mmvq_q8_0", rows, 1, 128, {&wp, &xp, &yp, &rows, &cols, &ntok});
    }
    {
        int n_rows = 1, n_heads = 2, n_kv = 1, hd = 64, bs = 16;
        float scale = 0.125f;
        int keys = 40;
        std::vector<float> q(n_heads * hd, 0.5f), k(64 * hd, 0.25f), v(64 * hd, 1.0f), out(n_heads * hd);
        std::vector<int> table = {2, 0, 3, 1}, seq = {0}, pos = {keys - 1}, start = {0};
        float *qp = q.data(), *kp = k.data(), *vp = v.data(), *op = out.data();
        int *tp = table.data(), *sp = seq.data(), *pp = pos.data(), *stp = start.data();
        rc |= launch("attention_paged", n_rows, n_kv, 128,
                     {&qp, &kp, &vp, &tp, &sp, &pp, &stp, &op, &n_rows, &n_heads, &n_kv, &hd, &bs, &scale});
    }
    {
        int ntok = 3, n_heads = 2, hd = 64, neox = 1;
        float theta = 10000.0f;
        std::vector<float> x(ntok * n_heads * hd, 0.5f);
        std::vector<int> pos = {0, 5, 9};
        float* xp = x.data();
        int* pp = pos.data();
        rc |= launch("rope", ntok, 1, 128, {&xp, &pp, &ntok, &n_heads, &hd, &theta, &neox});
    }
    {
        int rows = 8, cols = 256, ntok = 16;
        std::vector<unsigned char> wq(rows * cols / 32 * 34, 1), xq(ntok * cols / 32 * 36, 1);
        std::vector<float> y(rows * ntok);
        void *wp = wq.data(), *xp = xq.data();
        float* yp = y.data();
        rc |= launch("mmq_q8_0", rows / 4, ntok / 8, 128, {&wp, &xp, &yp, &rows, &cols, &ntok});
    }
    {
        // The tensor-core product: staging into shared memory, barriers, warp-wide mma (two
        // row tiles and two token tiles, the second of each partial).
        int rows = 70, cols = 512, ntok = 40;
        std::vector<unsigned char> wq(rows * cols / 256 * 144, 1), xq(ntok * cols / 32 * 36, 1);
        std::vector<float> y(rows * ntok);
        void *wp = wq.data(), *xp = xq.data();
        float* yp = y.data();
        rc |= launch("mmq_mma_q4_k", 2, 2, 128, {&wp, &xp, &yp, &rows, &cols, &ntok});
    }
    {
        int n_rows = 2, n_heads = 4, n_kv = 2, hd = 64, bs = 16, kps = 32, splits = 2;
        float scale = 0.125f;
        std::vector<float> q(n_rows * n_heads * hd, 0.5f), k(64 * n_kv * hd, 0.25f),
            v(64 * n_kv * hd, 1.0f), part_o(n_rows * n_heads * splits * hd),
            part_ml(n_rows * n_heads * splits * 2), out(n_rows * n_heads * hd);
        std::vector<int> table = {2, 0, 3, 1}, seq = {0, 0}, pos = {20, 50}, start = {0};
        float *qp = q.data(), *kp = k.data(), *vp = v.data(), *pop = part_o.data(),
              *pmp = part_ml.data(), *op = out.data();
        int *tp = table.data(), *sp = seq.data(), *pp = pos.data(), *stp = start.data();
        const unsigned grid[3] = {(unsigned)n_rows, (unsigned)n_kv, (unsigned)splits};
        const unsigned block[3] = {128, 1, 1};
        std::vector<void*> a = {&qp, &kp, &vp, &tp, &sp, &pp, &stp, &pop, &pmp, &n_rows,
                                &n_heads, &n_kv, &hd, &bs, &scale, &kps};
        const int r = cascade_shim_launch("attention_paged_split", grid, block, 0, a.data());
        std::printf("attention_paged_split: %d\n", r);
        rc |= r;
        rc |= launch("attention_combine", n_rows, n_heads, 128,
                     {&pop, &pmp, &pp, &op, &n_rows, &n_heads, &hd, &kps, &splits});
    }
    {
        // Two segments of 4096 values a row, then the merge over their candidates.
        int vocab = 5000, n = 3, k = 5, segs = 2;
        std::vector<float> logits(vocab * n);
        for (int i = 0; i < vocab * n; ++i) logits[i] = (float)((i * 37) % 101);
        std::vector<int> idx(n * segs * k), idx2(n * k);
        std::vector<float> val(n * segs * k), val2(n * k);
        std::vector<unsigned char> valid(vocab, 1);
        valid[37] = 0;
        float *lp = logits.data(), *vp = val.data(), *vp2 = val2.data();
        int *ip = idx.data(), *ip2 = idx2.data(), *no_ids = nullptr;
        unsigned char *validp = valid.data(), *all = nullptr;
        int merged = segs * k;
        rc |= launch("topk_rows", n, segs, 256, {&lp, &no_ids, &validp, &vocab, &n, &k, &ip, &vp});
        rc |= launch("topk_rows", n, 1, 256, {&vp, &ip, &all, &merged, &n, &k, &ip2, &vp2});
        rc |= launch("argmax_rows", n, 1, 256, {&lp, &validp, &vocab, &n, &ip2, &vp2});
    }
    {
        // The restricted output layer's scatter: a fill, a barrier, then the subset and each
        // row's own extras written by other threads.
        int vocab = 700, n = 2, k = 300, u = 4;
        std::vector<float> out(vocab * n), sub(n * k, 1.0f), ext(n * u, 2.0f);
        std::vector<int> sub_ids(k), ext_ids = {1, 5, 601, 603}, start = {0, 2, 4}, cols = {0, 2, 1, 3};
        for (int j = 0; j < k; ++j) sub_ids[j] = 2 * j;
        float *op = out.data(), *sp = sub.data(), *ep = ext.data();
        int *sip = sub_ids.data(), *eip = ext_ids.data(), *stp = start.data(), *cp = cols.data();
        rc |= launch("scatter_logits", n, 1, 256,
                     {&op, &vocab, &n, &sp, &sip, &k, &ep, &eip, &u, &stp, &cp});
    }
    if (argc > 1 && std::strcmp(argv[1], "--racy") == 0) {
        int n = 64, sync = 0;
        std::vector<float> x(n, 1.0f);
        float* xp = x.data();
        rc |= launch("shim_test_reverse", 1, 1, n, {&xp, &n, &sync});
    }
    return rc;
}

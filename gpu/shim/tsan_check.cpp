// A ThreadSanitizer run of the shim (not part of the cargo build): gpu/shim/tsan-check builds
// this with -fsanitize=thread and runs it. It launches rms_norm, mmvq_q8_0 and attention_paged
// (barriers, warp shuffles, shared memory), which must be race free, and then, with
// `--racy`, shim_test_reverse without its barrier, which TSan must report.
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
    if (argc > 1 && std::strcmp(argv[1], "--racy") == 0) {
        int n = 64, sync = 0;
        std::vector<float> x(n, 1.0f);
        float* xp = x.data();
        rc |= launch("shim_test_reverse", 1, 1, n, {&xp, &n, &sync});
    }
    return rc;
}

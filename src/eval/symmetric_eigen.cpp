// Symmetric eigen-decomposition through LAPACK's dsyevd (divide and conquer),
// which OpenBLAS ships; declared here because Debian's OpenBLAS does not
// install a LAPACKE header by default.
#include <algorithm>
#include <cstddef>

#include "jem/error.hpp"
#include "jem/fid.hpp"

extern "C" void dsyevd_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda,
                        double* w, double* work, const int* lwork, int* iwork, const int* liwork,
                        int* info, std::size_t jobz_len, std::size_t uplo_len);

namespace jem {

void symmetric_eigen(const std::vector<double>& a, int n, std::vector<double>* values,
                     std::vector<double>* vectors) {
  JEM_CHECK(n >= 1 && a.size() == std::size_t(n) * std::size_t(n), "symmetric_eigen: ", a.size(),
            " values for a ", n, "x", n, " matrix");
  // LAPACK is column-major; a symmetric matrix is its own transpose, so the
  // row-major buffer reads the same. The eigenvectors come back as columns of
  // the column-major result, i.e. as rows of the row-major buffer: transposed
  // below.
  std::vector<double> work_a = a;
  values->assign(std::size_t(n), 0.0);
  const char jobz = vectors ? 'V' : 'N', uplo = 'L';
  int lwork = -1, liwork = -1, info = 0, iwork_query = 0;
  double work_query = 0.0;
  dsyevd_(&jobz, &uplo, &n, work_a.data(), &n, values->data(), &work_query, &lwork, &iwork_query,
          &liwork, &info, 1, 1);
  JEM_CHECK(info == 0, "symmetric_eigen: dsyevd workspace query failed (info ", info, ")");
  lwork = std::max(1, int(work_query));
  liwork = std::max(1, iwork_query);
  std::vector<double> work(static_cast<std::size_t>(lwork));
  std::vector<int> iwork(static_cast<std::size_t>(liwork));
  dsyevd_(&jobz, &uplo, &n, work_a.data(), &n, values->data(), work.data(), &lwork, iwork.data(),
          &liwork, &info, 1, 1);
  JEM_CHECK(info == 0, "symmetric_eigen: dsyevd failed to converge (info ", info, ") on a ", n, "x",
            n, " matrix");
  if (vectors) {
    vectors->assign(std::size_t(n) * std::size_t(n), 0.0);
    for (int i = 0; i < n; ++i)    // eigenvector i = column i of column-major work_a
      for (int r = 0; r < n; ++r)  // = row i of the row-major buffer
        (*vectors)[std::size_t(r) * n + i] = work_a[std::size_t(i) * n + r];
  }
}

}  // namespace jem

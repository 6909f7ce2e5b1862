// A structural check of MATLAB .mat files, run before libmatio sees them.
//
// Why: libmatio 1.5.23 allocates buffers whose sizes it reads from the file (a dimension product
// times the class size, a name's byte count, a rank) before it compares them with what the file
// holds. 282-byte files found by fuzz_svhn made it allocate 1.5 GB, 3.9 GB, 14 GB and 31 GB
// (fuzz/corpus/svhn/regress_matio_*); files without the "MATLAB" text header go to matio's
// headerless v4 reader, which does the same (regress_v4_huge_alloc). This pass reads only element tags and matrix
// headers (inflating a compressed variable just far enough to see its header) and rejects a file whose sizes cannot be
// true, so that what matio allocates from a header stays within a small multiple of what the file stores.
#pragma once

#include <string>

namespace jem::detail {

// Throws a one-line jem::Error naming `path` and the problem unless the file is:
//  - a 128-byte header: the text "MATLAB", the version 0x0100 (v5) or 0x0200 (v7.3) and the
//    endian indicator "IM" (little-endian file) or "MI" (big-endian), which orders every later
//    number in the file;
//  - for v7.3: nothing more is checked here (an HDF5 file: matio and HDF5 read it);
//  - for v5: top-level elements, each a matrix (miMATRIX) or a zlib-compressed matrix
//    (miCOMPRESSED), whose byte counts fit in the file; a compressed matrix may claim at most
//    1032x its compressed bytes (the most that deflate expands to);
//  - in every matrix (nested ones in cells and structs too): sub-elements that fit in their
//    matrix; array flags of 8 bytes with a MATLAB class; int32 dimensions of rank <= 32; an int8
//    name of <= 64 KiB; and for numeric and char arrays a data element that holds the elements
//    the dimensions count (numel x the size of its stored type), for cells and structs room for
//    one 8-byte tag per element.
// libmatio then allocates at most the class size (<= 8 bytes) per element that the file stores
// (for a compressed variable: per element that its compressed bytes can inflate to).
void check_mat_file(const std::string& path);

}  // namespace jem::detail

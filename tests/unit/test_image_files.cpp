// Image folder and list-file scanning (src/ingest/image_files.*): trees made in a temp dir.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "imgstore/error.hpp"
#include "ingest/image_files.hpp"
#include "test_support.hpp"

using namespace imgstore;
using namespace imgstore::detail;
using imgstore::test::data_error;
using imgstore::test::spit;
using imgstore::test::TempDir;
namespace fs = std::filesystem;
using namespace std::string_literals;

namespace {

// Creates each file (and its folders) with a few bytes; a name ending in '/' is a folder.
void make_tree(const fs::path& root, const std::vector<std::string>& names) {
  for (const auto& n : names) {
    if (!n.empty() && n.back() == '/') {
      fs::create_directories(root / n);
    } else {
      fs::create_directories((root / n).parent_path());
      spit(root / n, "x");
    }
  }
}

using Listing = std::vector<std::pair<std::string, std::uint32_t>>;

Listing listing(const ImageSplit& split) {
  Listing out;
  for (std::size_t i = 0; i < split.files.size(); ++i) {
    out.emplace_back(std::string(split.files.path(i)), split.files.label(i));
  }
  return out;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("image files: a flat folder gives sorted classes, torchvision's order and skip counts") {
  TempDir dir;
  const fs::path root = dir / "photos";
  make_tree(root, {"dog/b.jpg", "dog/A.JPG", "dog/c.Jpeg", "dog/d.png", "dog/e.jpe", "dog/f.JFIF",
                   "dog/notes.txt", "dog/g.bmp", "dog/h.webp", "dog/.hidden.jpg",
                   "dog/.cache/x.jpg", "dog/noext", "cat/z.png",
                   // torchvision walks sorted(os.walk()): folders by path ("sub" < "sub b" <
                   // "sub/deeper" since ' ' < '/'), files by name within each folder.
                   "cat/sub/y.jpg", "cat/sub b/a.jpg", "cat/sub/deeper/a.jpg", "cat/a.jpg",
                   "README.md", ".DS_Store", ".git/"});
  const ImageFileScan scan = scan_image_folder(root);
  CHECK(scan.class_names == std::vector<std::string>{"cat", "dog"});
  REQUIRE(scan.splits.size() == 1);
  CHECK(scan.splits[0].name == "train");
  CHECK(scan.splits[0].base == root);
  CHECK(listing(scan.splits[0]) == Listing{{"cat/a.jpg", 0},
                                           {"cat/z.png", 0},
                                           {"cat/sub/y.jpg", 0},
                                           {"cat/sub b/a.jpg", 0},
                                           {"cat/sub/deeper/a.jpg", 0},
                                           {"dog/A.JPG", 1},
                                           {"dog/b.jpg", 1},
                                           {"dog/c.Jpeg", 1},
                                           {"dog/d.png", 1},
                                           {"dog/e.jpe", 1},
                                           {"dog/f.JFIF", 1}});
  CHECK(scan.file_count() == 11);
  CHECK(scan.skipped_count(SkipReason::Hidden) == 4);  // .hidden.jpg .cache/ .DS_Store .git/
  CHECK(scan.skipped_count(SkipReason::OtherExtension) == 2);    // notes.txt noext
  CHECK(scan.skipped_count(SkipReason::UnsupportedImage) == 2);  // g.bmp h.webp
  CHECK(scan.skipped_count(SkipReason::OutsideClass) == 1);      // README.md
  CHECK(scan.skipped_count(SkipReason::NotRegularFile) == 0);
  CHECK(scan.bad.empty());
  CHECK(std::string(skip_reason_name(SkipReason::Hidden)) == "hidden");

  // Same tree, same answer.
  const ImageFileScan again = scan_image_folder(root);
  CHECK(listing(again.splits[0]) == listing(scan.splits[0]));
}

TEST_CASE("image files: names with spaces and UTF-8 sort by their bytes, like Python's sorted") {
  TempDir dir;
  make_tree(dir.path(), {"Zebra/1.jpg", "apple pie/x y.jpg", "\xC3\xA9" "clair/caf\xC3\xA9.png",
                         "apple pie/\xE6\x97\xA5\xE6\x9C\xAC.jpg", "apple pie/Z.jpg",
                         "apple pie/a,b \"q\".jpg"});
  const ImageFileScan scan = scan_image_folder(dir.path());
  // 'Z' (0x5A) < 'a' (0x61) < 0xC3 (the first byte of é).
  CHECK(scan.class_names ==
        std::vector<std::string>{"Zebra", "apple pie", "\xC3\xA9" "clair"});
  CHECK(listing(scan.splits[0]) ==
        Listing{{"Zebra/1.jpg", 0},
                {"apple pie/Z.jpg", 1},
                {"apple pie/a,b \"q\".jpg", 1},
                {"apple pie/x y.jpg", 1},
                {"apple pie/\xE6\x97\xA5\xE6\x9C\xAC.jpg", 1},
                {"\xC3\xA9" "clair/caf\xC3\xA9.png", 2}});
}

TEST_CASE("image files: split folders share one class list, and the layout can be forced") {
  TempDir dir;
  const fs::path root = dir / "imagenet";
  make_tree(root, {"val/dog/v1.jpg", "train/cat/t1.jpg", "train/dog/t2.jpg", "test/bird/s.png",
                   "train/loose.jpg", "LOC_synset_mapping.txt", ".hidden/"});
  const ImageFileScan scan = scan_image_folder(root);
  CHECK(scan.class_names == std::vector<std::string>{"bird", "cat", "dog"});
  REQUIRE(scan.splits.size() == 3);
  CHECK(scan.splits[0].name == "train");
  CHECK(scan.splits[0].base == root / "train");
  CHECK(listing(scan.splits[0]) == Listing{{"cat/t1.jpg", 1}, {"dog/t2.jpg", 2}});
  CHECK(scan.splits[1].name == "val");
  CHECK(listing(scan.splits[1]) == Listing{{"dog/v1.jpg", 2}});
  CHECK(scan.splits[2].name == "test");
  CHECK(listing(scan.splits[2]) == Listing{{"bird/s.png", 0}});
  CHECK(scan.skipped_count(SkipReason::OutsideClass) == 2);  // train/loose.jpg, the .txt
  CHECK(scan.skipped_count(SkipReason::Hidden) == 1);

  // Forced flat: train, val and test are classes.
  ScanOptions flat;
  flat.layout = ScanOptions::Layout::Flat;
  const ImageFileScan as_classes = scan_image_folder(root, flat);
  CHECK(as_classes.class_names == std::vector<std::string>{"test", "train", "val"});
  REQUIRE(as_classes.splits.size() == 1);
  CHECK(listing(as_classes.splits[0]) == Listing{{"test/bird/s.png", 0},
                                                 {"train/loose.jpg", 1},
                                                 {"train/cat/t1.jpg", 1},
                                                 {"train/dog/t2.jpg", 1},
                                                 {"val/dog/v1.jpg", 2}});

  // One folder that is not a split name makes the whole root a class folder layout.
  make_tree(root, {"extra/e.jpg"});
  const ImageFileScan mixed = scan_image_folder(root);
  CHECK(mixed.class_names == std::vector<std::string>{"extra", "test", "train", "val"});
  REQUIRE(mixed.splits.size() == 1);

  // ... unless splits are forced: then "extra" is a split (after the known names) whose
  // e.jpg is outside any class folder, so it has no class folder.
  ScanOptions splits;
  splits.layout = ScanOptions::Layout::Splits;
  const std::string msg = data_error([&] { scan_image_folder(root, splits); });
  CHECK(contains(msg, "no class folder in '" + (root / "extra").string() + "'"));
  splits.skip_bad = true;
  const ImageFileScan forced = scan_image_folder(root, splits);
  REQUIRE(forced.splits.size() == 4);
  CHECK(forced.splits[3].name == "extra");
  CHECK(forced.splits[3].files.empty());
  CHECK(listing(forced.splits[0]) == listing(scan.splits[0]));
  REQUIRE(forced.bad.size() == 1);
  CHECK(forced.bad[0].message == msg);
  CHECK(forced.bad[0].path == (root / "extra").string());
}

TEST_CASE("image files: a folder without class folders is an error, a missing one an IoError") {
  TempDir dir;
  make_tree(dir.path(), {"a.jpg"});
  const std::string msg = data_error([&] { scan_image_folder(dir.path()); });
  CHECK(contains(msg, "no class folder in '" + dir.path().string() + "'"));
  CHECK_THROWS_AS(scan_image_folder(dir / "missing"), IoError);
  CHECK_THROWS_AS(scan_image_folder(dir / "a.jpg"), UsageError);
}

TEST_CASE("image files: a class folder with no images is an error, or skipped and reported") {
  TempDir dir;
  make_tree(dir.path(), {"cat/a.jpg", "dog/readme.txt", "emu/", "fox/b.png"});
  const std::string msg = data_error([&] { scan_image_folder(dir.path()); });
  CHECK(contains(msg, "class folder '" + (dir / "dog").string() + "' has no images"));

  ScanOptions skip;
  skip.skip_bad = true;
  const ImageFileScan scan = scan_image_folder(dir.path(), skip);
  // The empty classes keep their labels, so labels do not shift when images are added later.
  CHECK(scan.class_names == std::vector<std::string>{"cat", "dog", "emu", "fox"});
  CHECK(listing(scan.splits[0]) == Listing{{"cat/a.jpg", 0}, {"fox/b.png", 3}});
  REQUIRE(scan.bad.size() == 2);
  CHECK(scan.bad[0].path == (dir / "dog").string());
  CHECK(scan.bad[1].path == (dir / "emu").string());
  CHECK(contains(scan.bad[1].message, "has no images (.jpg .jpeg .jpe .jfif .png)"));
}

TEST_CASE("image files: symlinks are followed, broken links and link loops are named") {
  TempDir dir;
  const fs::path root = dir / "root";
  make_tree(dir.path(), {"elsewhere/far.jpg", "elsewhere/deep/d.png", "photo.jpg"});
  make_tree(root, {"cat/a.jpg", "dog/b.jpg"});
  fs::create_directory_symlink(dir / "elsewhere", root / "cat" / "linked");
  fs::create_symlink(dir / "photo.jpg", root / "dog" / "c.jpg");
  fs::create_directory_symlink(dir / "elsewhere", root / "emu");  // a class through a link
  fs::create_symlink(dir / "nothing.txt", root / "dog" / "gone.txt");
  const ImageFileScan scan = scan_image_folder(root);
  CHECK(scan.class_names == std::vector<std::string>{"cat", "dog", "emu"});
  CHECK(listing(scan.splits[0]) == Listing{{"cat/a.jpg", 0},
                                           {"cat/linked/far.jpg", 0},
                                           {"cat/linked/deep/d.png", 0},
                                           {"dog/b.jpg", 1},
                                           {"dog/c.jpg", 1},
                                           {"emu/far.jpg", 2},
                                           {"emu/deep/d.png", 2}});
  CHECK(scan.skipped_count(SkipReason::OtherExtension) == 1);  // the broken .txt link

  SUBCASE("a broken link with an image name") {
    fs::create_symlink(dir / "nothing.jpg", root / "dog" / "gone.jpg");
    const std::string gone = (root / "dog" / "gone.jpg").string();
    const std::string msg = data_error([&] { scan_image_folder(root); });
    CHECK(contains(msg, "cannot open image '" + gone + "'"));
    CHECK(contains(msg, "broken symbolic link"));
    ScanOptions skip;
    skip.skip_bad = true;
    const ImageFileScan skipped = scan_image_folder(root, skip);
    REQUIRE(skipped.bad.size() == 1);
    CHECK(skipped.bad[0].path == gone);
    CHECK(skipped.file_count() == scan.file_count());
  }
  SUBCASE("a link to an ancestor folder") {
    fs::create_directories(root / "cat" / "sub");
    fs::create_directory_symlink(root / "cat", root / "cat" / "sub" / "up");
    const std::string up = (root / "cat" / "sub" / "up").string();
    const std::string msg = data_error([&] { scan_image_folder(root); });
    CHECK(contains(msg, "symbolic link loop"));
    CHECK(contains(msg, "'" + up + "'"));
    ScanOptions skip;
    skip.skip_bad = true;
    const ImageFileScan skipped = scan_image_folder(root, skip);
    REQUIRE(skipped.bad.size() == 1);
    CHECK(skipped.bad[0].path == up);
    CHECK(listing(skipped.splits[0]) == listing(scan.splits[0]));
  }
  SUBCASE("a link to the root (the loop goes through another class)") {
    fs::create_directory_symlink(root, root / "dog" / "all");
    const std::string msg = data_error([&] { scan_image_folder(root); });
    CHECK(contains(msg, "symbolic link loop"));
    CHECK(contains(msg, "'" + (root / "dog" / "all" / "dog").string() + "'"));
  }
  SUBCASE("a link to itself") {
    fs::create_symlink(root / "cat" / "self", root / "cat" / "self");
    const std::string msg = data_error([&] { scan_image_folder(root); });
    CHECK(contains(msg, "symbolic link loop at '" + (root / "cat" / "self").string() + "'"));
  }
}

TEST_CASE("image files: FIFOs named like images are counted, never opened") {
  TempDir dir;
  make_tree(dir.path(), {"cat/a.jpg"});
  REQUIRE(::mkfifo((dir / "cat" / "pipe.jpg").c_str(), 0600) == 0);
  const ImageFileScan scan = scan_image_folder(dir.path());
  CHECK(listing(scan.splits[0]) == Listing{{"cat/a.jpg", 0}});
  CHECK(scan.skipped_count(SkipReason::NotRegularFile) == 1);
}

TEST_CASE("image files: FileList keeps paths in one arena") {
  FileList list;
  CHECK(list.empty());
  list.add("a/b.jpg", 3);
  list.add("", 0);
  list.add("c \xC3\xA9.png", 7);
  REQUIRE(list.size() == 3);
  CHECK(list.path(0) == "a/b.jpg");
  CHECK(list.path(1).empty());
  CHECK(list.path(2) == "c \xC3\xA9.png");
  CHECK(list.label(2) == 7);
  list.shrink_to_fit();
  CHECK(list.memory_bytes() >= 15 + 3 * 12);  // path bytes + 8 (end) + 4 (label) each
}

// ---- list files ----

TEST_CASE("image files: a list file with RFC 4180 quoting, splits, classes and CRLF") {
  TempDir dir;
  make_tree(dir.path(), {"img/a,b.jpg", "img/say \"hi\".png", "img/caf\xC3\xA9.jpg", "img/x.jpg",
                         "img/two\nlines.jpg", "img/y.JPEG"});
  spit(dir / "list.csv",
       "\xEF\xBB\xBFpath,label,split\r\n"
       "\"img/a,b.jpg\",2,train\r\n"
       "\"img/say \"\"hi\"\".png\",0,val\r\n"
       "\r\n"
       "img/caf\xC3\xA9.jpg,1,train\r\n"
       "\"img/two\nlines.jpg\",0,test\r\n"
       "./img//x.jpg,0,train\r\n"
       "img/y.JPEG,0,train");  // no final line break
  const ImageFileScan scan = read_image_list(dir / "list.csv");
  CHECK(scan.class_names == std::vector<std::string>{"0", "1", "2"});
  REQUIRE(scan.splits.size() == 3);
  CHECK(scan.splits[0].name == "train");
  CHECK(scan.splits[0].base == dir.path());
  CHECK(listing(scan.splits[0]) == Listing{{"img/a,b.jpg", 2},
                                           {"img/caf\xC3\xA9.jpg", 1},
                                           {"img/x.jpg", 0},
                                           {"img/y.JPEG", 0}});
  CHECK(scan.splits[1].name == "val");
  CHECK(listing(scan.splits[1]) == Listing{{"img/say \"hi\".png", 0}});
  CHECK(scan.splits[2].name == "test");
  CHECK(listing(scan.splits[2]) == Listing{{"img/two\nlines.jpg", 0}});
  CHECK(scan.bad.empty());
}

TEST_CASE("image files: a list file's class column names the labels, columns in any order") {
  TempDir dir;
  make_tree(dir.path(), {"a.jpg", "b.jpg", "c.png"});
  spit(dir / "l.csv", "class,label,path\ncat,0,a.jpg\n\"big dog\",3,b.jpg\ncat,0,c.png\n");
  const ImageFileScan scan = read_image_list(dir / "l.csv");
  // Labels never named keep their number as name.
  CHECK(scan.class_names == std::vector<std::string>{"cat", "1", "2", "big dog"});
  REQUIRE(scan.splits.size() == 1);
  CHECK(scan.splits[0].name == "train");
  CHECK(listing(scan.splits[0]) == Listing{{"a.jpg", 0}, {"b.jpg", 3}, {"c.png", 0}});
}

TEST_CASE("image files: every list-file row error names the file, the line and the problem") {
  TempDir dir;
  make_tree(dir.path(), {"ok.jpg", "sub/"});
  const fs::path csv = dir / "list.csv";
  const std::string q = "'" + csv.string() + "'";
  struct Case {
    std::string rows;  // after the header "path,label,class"
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"missing.jpg,0,a\n",
       "line 2: file '" + (dir / "missing.jpg").string() + "' does not exist"},
      {"ok.jpg,cat,a\n", "line 2: label 'cat' of 'ok.jpg' is not a non-negative integer"},
      {"ok.jpg,-1,a\n", "line 2: label '-1' of 'ok.jpg' is not a non-negative integer"},
      {"ok.jpg,+1,a\n", "line 2: label '+1' of 'ok.jpg' is not a non-negative integer"},
      {"ok.jpg, 1,a\n", "line 2: label ' 1' of 'ok.jpg' is not a non-negative integer"},
      {"ok.jpg,,a\n", "line 2: label '' of 'ok.jpg' is not a non-negative integer"},
      {"ok.jpg,1.5,a\n", "line 2: label '1.5' of 'ok.jpg' is not a non-negative integer"},
      {"ok.jpg,1000000,a\n", "line 2: label 1000000 of 'ok.jpg' is too large"},
      {"ok.jpg,99999999999999999999999,a\n", "is too large (labels must be below 1000000)"},
      {"ok.jpg,0\n", "line 2: expected 3 fields, found 2"},
      {"ok.jpg,0,a,b\n", "line 2: expected 3 fields, found 4"},
      {",0,a\n", "line 2: empty path"},
      {"/etc/passwd,0,a\n", "line 2: absolute path '/etc/passwd'"},
      {"../ok.jpg,0,a\n", "line 2: path '../ok.jpg' leaves the list's folder"},
      {"sub/../../x.jpg,0,a\n", "line 2: path 'sub/../../x.jpg' leaves the list's folder"},
      {"./.,0,a\n", "line 2: path './.' names the list's folder, not a file"},
      {"sub,0,a\n", "line 2: '" + (dir / "sub").string() + "' is a folder, not a file"},
      {"\"ok\0.jpg\",0,a\n"s, "line 2: the path contains a NUL byte"},
      {"ok.jpg,0,\n", "line 2: empty class name for label 0"},
      {"ok.jpg,0,a\n\nok.jpg,0,b\n", "line 4: label 0 is class 'b' here but 'a' on line 2"},
      {"ok.jpg,0,a\nok.jpg,1,a\n", "line 3: class 'a' is label 1 here but label 0 on line 2"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.rows);
    spit(csv, "path,label,class\n" + c.rows);
    const std::string msg = data_error([&] { read_image_list(csv); });
    CHECK(msg.rfind(q + " ", 0) == 0);
    CHECK(contains(msg, c.expected));
    // With skip_bad the row is listed and the good rows are kept.
    ScanOptions skip;
    skip.skip_bad = true;
    spit(csv, "path,label,class\n" + c.rows + "ok.jpg,5,five\n");
    const ImageFileScan scan = read_image_list(csv, skip);
    REQUIRE(scan.bad.size() == 1);
    CHECK(contains(scan.bad[0].message, c.expected));
    REQUIRE(scan.splits.size() == 1);
    CHECK(scan.splits[0].files.path(0) == "ok.jpg");
  }
}

TEST_CASE("image files: list-file structure errors always stop, naming file and line") {
  TempDir dir;
  make_tree(dir.path(), {"ok.jpg"});
  const fs::path csv = dir / "list.csv";
  const std::string q = "'" + csv.string() + "'";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", q + " is empty: expected a header"},
      {"\n\r\n", q + " is empty: expected a header"},
      {"path,label\n", q + " lists no files (only a header)"},
      {"path,label\n\n\n", q + " lists no files (only a header)"},
      {"file,label\nok.jpg,0\n", q + " line 1: unknown column 'file' in the header"},
      {"path\nok.jpg\n", q + " line 1: the header must name the columns path and label, found "
                             "'path'"},
      {"path,label,path\n", q + " line 1: column 'path' appears twice"},
      {"\npath,label,split\nok.jpg,0,.hidden\n", q + " line 3: split name '.hidden' is not"},
      {"path,label,split\nok.jpg,0,a/b\n", q + " line 2: split name 'a/b' is not"},
      {"path,label\nok.jpg,0\n\"ok.jpg,0\n", q + " line 3: unterminated quoted field"},
      {"path,label\nok.jpg,0\n\"ok\n\n.jpg,0\n", q + " line 3: unterminated quoted field"},
      {"path,label\nok\".jpg,0\n", q + " line 2: a quote inside an unquoted field"},
      {"path,label\n\"o\nk\"x.jpg,0\n", q + " line 3: characters after a closing quote"},
  };
  for (const auto& [text, expected] : cases) {
    CAPTURE(text);
    spit(csv, text);
    for (bool skip_bad : {false, true}) {
      ScanOptions options;
      options.skip_bad = skip_bad;
      if (contains(expected, "split name")) {
        // A row error: skipped with skip_bad.
        if (skip_bad) {
          CHECK(read_image_list(csv, options).bad.size() == 1);
          continue;
        }
      }
      const std::string msg = data_error([&] { read_image_list(csv, options); });
      CHECK(contains(msg, expected));
    }
  }
  CHECK_THROWS_AS(read_image_list(dir / "absent.csv"), IoError);
}

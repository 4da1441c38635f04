// FreeType 2 (Debian: libfreetype-dev; flags from pkg-config freetype2), for the pictures' text.
#include <ft2build.h>
#include FT_FREETYPE_H

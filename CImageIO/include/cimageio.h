// CImageIO: PNG and JPEG decoding and PNG encoding through libpng and libjpeg-turbo.
//
// Both libraries report errors through callbacks that must not return; the default JPEG one calls
// exit(). Here every error longjmps back to the entry point, which returns -1 with a message, so a
// corrupt or truncated file is an ordinary error for the caller.
#ifndef CIMAGEIO_H
#define CIMAGEIO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int width, height;
    /// Interleaved RGB, row-major, values in [0, 1] (16-bit PNG keeps its precision). Alpha is
    /// dropped, as PIL's convert("RGB") does. Free with ci_free.
    float *rgb;
    /// "png" or "jpeg".
    const char *format;
    /// Source bit depth and colour type, for information ("gray", "gray+alpha", "rgb", "rgba", "palette", "cmyk").
    int bit_depth;
    const char *color;
} ci_image;

/// Decodes PNG or JPEG (by signature) from memory. Returns 0, or -1 with a message in err.
/// Images with more than max_pixels pixels are refused before decoding their data.
int ci_decode(const uint8_t *data, size_t size, long max_pixels, ci_image *out, char *err, size_t errlen);
void ci_free(ci_image *img);

/// Encodes 8-bit RGB (channels 3) or RGBA (channels 4) as PNG into a malloc'ed buffer.
/// Returns 0, or -1 with a message in err. Free *png with free().
int ci_encode_png(const uint8_t *pixels, int width, int height, int channels, uint8_t **png, size_t *size,
                  char *err, size_t errlen);
void ci_free_buffer(uint8_t *buffer);

#ifdef __cplusplus
}
#endif
#endif

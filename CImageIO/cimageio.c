#include "include/cimageio.h"

#include <stdio.h>  // jpeglib.h needs FILE

#include <jpeglib.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

static void set_err(char *err, size_t n, const char *msg) {
    if (err && n) { strncpy(err, msg, n - 1); err[n - 1] = 0; }
}

// MARK: PNG

typedef struct {
    const uint8_t *data;
    size_t size, pos;
    char message[200];
} png_src;

static void png_read_mem(png_structp png, png_bytep out, png_size_t len) {
    png_src *s = png_get_io_ptr(png);
    if (s->pos + len > s->size) png_error(png, "truncated PNG data");
    memcpy(out, s->data + s->pos, len);
    s->pos += len;
}

static void png_err_fn(png_structp png, png_const_charp msg) {
    png_src *s = png_get_error_ptr(png);
    if (s) snprintf(s->message, sizeof s->message, "%s", msg);
    png_longjmp(png, 1);
}

static void png_warn_fn(png_structp png, png_const_charp msg) { (void)png; (void)msg; }

static const char *png_color_name(int t) {
    switch (t) {
    case PNG_COLOR_TYPE_GRAY: return "gray";
    case PNG_COLOR_TYPE_GRAY_ALPHA: return "gray+alpha";
    case PNG_COLOR_TYPE_RGB: return "rgb";
    case PNG_COLOR_TYPE_RGBA: return "rgba";
    case PNG_COLOR_TYPE_PALETTE: return "palette";
    default: return "unknown";
    }
}

static int decode_png(const uint8_t *data, size_t size, long max_pixels, ci_image *out, char *err, size_t errlen) {
    png_src src = {data, size, 0, "corrupt PNG"};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_err_fn, png_warn_fn);
    if (!png) { set_err(err, errlen, "out of memory"); return -1; }
    png_infop info = png_create_info_struct(png);
    float *volatile rgb = NULL;
    png_bytep volatile row = NULL;
    if (!info || setjmp(png_jmpbuf(png))) {
        char msg[256];
        snprintf(msg, sizeof msg, "corrupt or truncated PNG: %s", src.message);
        set_err(err, errlen, msg);
        free(rgb); free(row);
        png_destroy_read_struct(&png, &info, NULL);
        return -1;
    }
    png_set_read_fn(png, &src, png_read_mem);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    int depth = png_get_bit_depth(png, info), ctype = png_get_color_type(png, info);
    if ((long)w * (long)h > max_pixels) {
        char msg[200];
        snprintf(msg, sizeof msg, "image is %ux%u, more than the limit of %ld pixels", w, h, max_pixels);
        set_err(err, errlen, msg);
        png_destroy_read_struct(&png, &info, NULL);
        return -1;
    }
    out->bit_depth = depth;
    out->color = png_color_name(ctype);
    if (ctype == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (ctype == PNG_COLOR_TYPE_GRAY || ctype == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
    png_set_strip_alpha(png);
    if (depth == 16) png_set_swap(png);  // little-endian 16-bit samples
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int bytes = depth == 16 ? 2 : 1;
    size_t rowbytes = png_get_rowbytes(png, info);
    if (rowbytes != (size_t)w * 3 * bytes) png_error(png, "unexpected row layout after transforms");
    // Interlaced images need the whole image in memory; read all rows at once.
    png_bytep all = malloc(rowbytes * h);
    png_bytep *rows = malloc(sizeof(png_bytep) * h);
    if (!all || !rows) { free(all); free(rows); png_error(png, "out of memory"); }
    row = all;
    for (png_uint_32 y = 0; y < h; y++) rows[y] = all + y * rowbytes;
    png_read_image(png, rows);
    free(rows);
    rgb = malloc(sizeof(float) * w * h * 3);
    if (!rgb) png_error(png, "out of memory");
    for (size_t i = 0; i < (size_t)w * h * 3; i++)
        rgb[i] = bytes == 2 ? ((uint16_t *)all)[i] / 65535.0f : all[i] / 255.0f;
    free(all);
    row = NULL;
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    out->width = (int)w; out->height = (int)h; out->rgb = rgb; out->format = "png";
    return 0;
}

// MARK: JPEG

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} jpeg_err;

static void jpeg_exit(j_common_ptr c) {
    jpeg_err *e = (jpeg_err *)c->err;
    (*c->err->format_message)(c, e->message);
    longjmp(e->jump, 1);
}

// Silent, but counts warnings (level < 0) as the default handler does: a truncated file is a warning.
static void jpeg_silent(j_common_ptr c, int level) {
    if (level < 0) c->err->num_warnings++;
}

static int decode_jpeg(const uint8_t *data, size_t size, long max_pixels, ci_image *out, char *err, size_t errlen) {
    struct jpeg_decompress_struct cinfo;
    jpeg_err jerr;
    float *volatile rgb = NULL;
    JSAMPLE *volatile row = NULL;
    cinfo.err = jpeg_std_error(&jerr.pub);
    jerr.pub.error_exit = jpeg_exit;
    jerr.pub.emit_message = jpeg_silent;
    if (setjmp(jerr.jump)) {
        char msg[300];
        snprintf(msg, sizeof msg, "corrupt or truncated JPEG: %s", jerr.message);
        set_err(err, errlen, msg);
        free(rgb); free(row);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    if ((long)cinfo.image_width * (long)cinfo.image_height > max_pixels) {
        snprintf(jerr.message, sizeof jerr.message, "image is %ux%u, more than the limit of %ld pixels",
                 cinfo.image_width, cinfo.image_height, max_pixels);
        set_err(err, errlen, jerr.message);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    out->color = cinfo.jpeg_color_space == JCS_GRAYSCALE ? "gray"
               : (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) ? "cmyk" : "rgb";
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        snprintf(jerr.message, sizeof jerr.message, "CMYK JPEG is not supported");
        longjmp(jerr.jump, 1);
    }
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    int w = (int)cinfo.output_width, h = (int)cinfo.output_height;
    rgb = malloc(sizeof(float) * (size_t)w * h * 3);
    row = malloc((size_t)w * 3);
    if (!rgb || !row) { snprintf(jerr.message, sizeof jerr.message, "out of memory"); longjmp(jerr.jump, 1); }
    while (cinfo.output_scanline < cinfo.output_height) {
        int y = (int)cinfo.output_scanline;
        JSAMPROW r = row;
        if (jpeg_read_scanlines(&cinfo, &r, 1) != 1) {
            snprintf(jerr.message, sizeof jerr.message, "premature end of data");
            longjmp(jerr.jump, 1);
        }
        for (int i = 0; i < w * 3; i++) rgb[(size_t)y * w * 3 + i] = row[i] / 255.0f;
    }
    // libjpeg only warns on a truncated file (it pads with gray); treat that as the error it is.
    if (jerr.pub.num_warnings > 0) {
        snprintf(jerr.message, sizeof jerr.message, "the data ends early or is damaged");
        longjmp(jerr.jump, 1);
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    free(row);
    out->width = w; out->height = h; out->rgb = rgb; out->format = "jpeg"; out->bit_depth = 8;
    return 0;
}

int ci_decode(const uint8_t *data, size_t size, long max_pixels, ci_image *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    static const uint8_t png_sig[8] = {137, 80, 78, 71, 13, 10, 26, 10};
    if (size >= 8 && !memcmp(data, png_sig, 8)) return decode_png(data, size, max_pixels, out, err, errlen);
    if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF)
        return decode_jpeg(data, size, max_pixels, out, err, errlen);
    set_err(err, errlen, "not a PNG or JPEG file (unknown signature)");
    return -1;
}

void ci_free(ci_image *img) {
    free(img->rgb);
    img->rgb = NULL;
}

// MARK: PNG encoding

typedef struct {
    uint8_t *buf;
    size_t size, cap;
    char message[200];
} png_dst;

static void png_write_mem(png_structp png, png_bytep data, png_size_t len) {
    png_dst *d = png_get_io_ptr(png);
    if (d->size + len > d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 65536;
        while (cap < d->size + len) cap *= 2;
        uint8_t *b = realloc(d->buf, cap);
        if (!b) png_error(png, "out of memory");
        d->buf = b; d->cap = cap;
    }
    memcpy(d->buf + d->size, data, len);
    d->size += len;
}

static void png_flush_mem(png_structp png) { (void)png; }

int ci_encode_png(const uint8_t *pixels, int width, int height, int channels, uint8_t **out, size_t *size,
                  char *err, size_t errlen) {
    if ((channels != 3 && channels != 4) || width <= 0 || height <= 0) {
        set_err(err, errlen, "PNG encoding needs a non-empty RGB or RGBA image");
        return -1;
    }
    png_dst dst = {NULL, 0, 0, "PNG encoding failed"};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &dst, png_err_fn, png_warn_fn);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info || setjmp(png_jmpbuf(png))) {
        set_err(err, errlen, dst.message);
        free(dst.buf);
        png_destroy_write_struct(&png, &info);
        return -1;
    }
    png_set_write_fn(png, &dst, png_write_mem, png_flush_mem);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8,
                 channels == 4 ? PNG_COLOR_TYPE_RGBA : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < height; y++) png_write_row(png, (png_const_bytep)(pixels + (size_t)y * width * channels));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    *out = dst.buf;
    *size = dst.size;
    return 0;
}

void ci_free_buffer(uint8_t *buffer) { free(buffer); }

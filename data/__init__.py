"""Stanford Cars on disk: class names and filters, layouts and annotations, images, download;
``dataset.StanfordCarsCAM`` is its face."""
